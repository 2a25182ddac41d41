"""`frostline bench cache`: the activation cache against plain Keras, side by side.

In one process, on the same data and initial weights:
  (a) plain Keras `fit` of a model whose MobileNetV2 base is frozen,
  (b) the same as a frostline phase with `cache="auto"`,
  (c) the floor: one `predict` over the base, then the head alone on those features,
and, with the base unfrozen (where no cache applies), plain `fit` against a frostline
phase, for frostline's own overhead (`repeats` pairs in alternating order; the median of
the pairs' ratios).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import keras
import numpy as np

from frostline.phases import FineTune, Phase
from frostline.plan import Plan

__all__ = ["cache_benchmark", "main"]


def _model(image_size: int, classes: int) -> keras.Model:
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(image_size, image_size, 3))
    return keras.Sequential([keras.Input((image_size, image_size, 3)), base,
                             keras.layers.GlobalAveragePooling2D(name="pool"),
                             keras.layers.Dense(classes, name="head")], name="bench")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cache_benchmark(*, images: int = 512, image_size: int = 96, epochs: int = 10, batch_size: int = 32,
                    unfrozen_epochs: int = 2, repeats: int = 4, seed: int = 0, say=print) -> dict[str, float]:
    """Runs the measurements; returns the times, ratios and the cache size."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.random((images, image_size, image_size, 3), dtype=np.float32)
    y = rng.integers(0, 5, images)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference = _model(image_size, 5)
    initial = reference.get_weights()

    def fresh() -> keras.Model:
        model = _model(image_size, 5)
        model.set_weights(initial)
        return model

    plain = fresh()
    plain.layers[0].trainable = False
    plain.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    t_plain = _timed(lambda: plain.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=False))
    say(f"(a) plain Keras fit, frozen base:        {t_plain:8.1f} s")

    cached = fresh()
    run = FineTune(cached, [Phase("head", epochs, Plan().freeze(cached.layers[0].name))],
                   optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    sizes = []
    original = run._cache.for_phase

    def recording(*args, **kwargs):
        context = original(*args, **kwargs)

        class Wrap:
            def __enter__(self):
                value = context.__enter__()
                sizes.append(value.nbytes)
                return value

            def __exit__(self, *exc):
                return context.__exit__(*exc)

        return Wrap()

    run._cache.for_phase = recording
    t_cached = _timed(lambda: run.fit(x, y, batch_size=batch_size, verbose=0, shuffle=False))
    say(f"(b) frostline phase, cache='auto':       {t_cached:8.1f} s  (cache {sizes[0]:,} bytes)")

    floor_model = fresh()
    base, pool, head = floor_model.layers
    features_model = keras.Sequential([keras.Input((image_size, image_size, 3)), base, pool])
    head_model = keras.Sequential([keras.Input((pool.output.shape[-1],)), head])
    head_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)

    def floor():
        features = features_model.predict(x, batch_size=batch_size, verbose=0)
        head_model.fit(features, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=False)

    t_floor = _timed(floor)
    say(f"(c) floor: predict once + head alone:    {t_floor:8.1f} s")

    heads = [m.get_layer("head").kernel for m in (plain, cached)] + [head.kernel]
    values = [keras.ops.convert_to_numpy(k.value) for k in heads]
    disagreement = max(float(np.max(np.abs(values[0] - v) / (np.abs(values[0]) + 1e-6))) for v in values[1:])

    # Pairs in alternating order, and the median of each pair's ratio: on a small machine
    # the second of two runs can be the faster one (warm caches) or the slower one (a busy
    # neighbour), and the machine's speed drifts over minutes.
    plain_times, ours_times = [], []
    for repeat in range(repeats):
        for who in (("plain", "ours") if repeat % 2 == 0 else ("ours", "plain")):
            model = fresh()
            if who == "plain":
                model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss)
                plain_times.append(_timed(lambda: model.fit(
                    x, y, batch_size=batch_size, epochs=unfrozen_epochs, verbose=0, shuffle=False)))
            else:
                run_all = FineTune(model, [Phase("all", unfrozen_epochs)], optimizer=keras.optimizers.Adam(1e-4), loss=loss)
                ours_times.append(_timed(lambda: run_all.fit(x, y, batch_size=batch_size, verbose=0, shuffle=False)))
    overhead = float(np.median([o / p for o, p in zip(ours_times, plain_times)]))
    say(f"unfrozen base, plain Keras fit:          {', '.join(f'{t:.1f}' for t in plain_times)} s")
    say(f"unfrozen base, frostline phase:          {', '.join(f'{t:.1f}' for t in ours_times)} s")
    say(f"unfrozen base, frostline / plain:        {', '.join(f'{o / p:.3f}' for o, p in zip(ours_times, plain_times))}"
        f"  (median {overhead:.3f})")
    return {
        "plain": t_plain, "cached": t_cached, "floor": t_floor,
        "speedup": t_plain / t_cached, "floor_ratio": t_cached / t_floor,
        "unfrozen_overhead": overhead, "cache_bytes": sizes[0],
        "head_disagreement": disagreement,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the cache benchmark from the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="frostline bench cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--unfrozen-epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4,
                        help="pairs of unfrozen runs (plain, frostline) for the overhead ratio")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest relative difference allowed between the trained heads")
    args = parser.parse_args(argv)
    result = cache_benchmark(images=args.images, image_size=args.image_size, epochs=args.epochs,
                             batch_size=args.batch_size, unfrozen_epochs=args.unfrozen_epochs,
                             repeats=args.repeats)
    print(f"speedup a/b {result['speedup']:.2f} (target >= 6) · floor ratio b/c {result['floor_ratio']:.3f} "
          f"(target <= 1.15) · unfrozen overhead {result['unfrozen_overhead']:.3f} (target <= 1.03) · "
          f"heads differ by {result['head_disagreement']:.2e} (relative)")
    status = 0
    if result["head_disagreement"] > args.tolerance:
        print(f"error: the trained heads disagree by {result['head_disagreement']:.2e} > {args.tolerance}")
        status = 1
    print(f"speedup={result['speedup']:.2f} floor_ratio={result['floor_ratio']:.3f} "
          f"unfrozen_overhead={result['unfrozen_overhead']:.3f} cache_bytes={result['cache_bytes']}")
    return status

