"""`frostline bench cache` and `frostline bench memory`: the activation cache against plain
Keras, side by side (the scenes and options: `frostline.app.bench_args`)."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

import keras
import numpy as np

from frostline.app.bench_args import SCENES, TARGETS, cache_parser, memory_parser
from frostline.app.bench_scenes import Batches, RecordingFineTune, SceneResult, Sizes, run_scene, timed
from frostline.plan.plan import Plan
from frostline.train.phase import Phase
from frostline.train.runner import FineTune

__all__ = ["cache_benchmark", "main", "memory_benchmark", "memory_main"]


def _model(image_size: int, classes: int) -> keras.Model:
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(image_size, image_size, 3))
    return keras.Sequential([keras.Input((image_size, image_size, 3)), base,
                             keras.layers.GlobalAveragePooling2D(name="pool"),
                             keras.layers.Dense(classes, name="head")], name="bench")


@dataclasses.dataclass(frozen=True)
class _Setup:
    """The data, loss and initial weights every measurement of `cache_benchmark` shares."""

    x: np.ndarray
    y: np.ndarray
    loss: keras.losses.Loss
    image_size: int
    initial: list
    batch_size: int

    def fresh(self) -> keras.Model:
        """A new model with the shared initial weights."""
        model = _model(self.image_size, 5)
        model.set_weights(self.initial)
        return model

    def fit(self, model, epochs: int | None = None) -> float:
        """Seconds of one `fit` (a FineTune's when `epochs` is None)."""
        kwargs = {} if epochs is None else {"epochs": epochs}
        return timed(lambda: model.fit(self.x, self.y, batch_size=self.batch_size, verbose=0, shuffle=False, **kwargs))


def _plain_frozen(setup: _Setup, epochs: int) -> tuple[float, keras.Model]:
    """(a) plain Keras `fit` with the base frozen."""
    plain = setup.fresh()
    plain.layers[0].trainable = False
    plain.compile(optimizer=keras.optimizers.Adam(1e-3), loss=setup.loss)
    return setup.fit(plain, epochs), plain


def _frostline_cached(setup: _Setup, epochs: int) -> tuple[float, keras.Model, RecordingFineTune]:
    """(b) a frostline phase with `cache="auto"`; also returns the run (its cache's size
    and line)."""
    cached = setup.fresh()
    run = RecordingFineTune(cached, [Phase("head", epochs=epochs, plan=Plan().freeze(cached.layers[0].name))],
                            optimizer=keras.optimizers.Adam(1e-3), loss=setup.loss)
    return setup.fit(run), cached, run


def _floor(setup: _Setup, epochs: int) -> tuple[float, keras.layers.Layer]:
    """(c) one `predict` over the base, then the head alone on those features."""
    base, pool, head = setup.fresh().layers
    features_model = keras.Sequential([keras.Input((setup.image_size, setup.image_size, 3)), base, pool])
    head_model = keras.Sequential([keras.Input((pool.output.shape[-1],)), head])
    head_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=setup.loss)

    def floor():
        features = features_model.predict(setup.x, batch_size=setup.batch_size, verbose=0)
        head_model.fit(features, setup.y, batch_size=setup.batch_size, epochs=epochs, verbose=0, shuffle=False)

    return timed(floor), head


def _unfrozen_pairs(setup: _Setup, epochs: int, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of plain `fit` and of a frostline phase with the base unfrozen, in pairs."""
    # Pairs in alternating order, and the median of each pair's ratio: on a small machine
    # the second of two runs can be the faster one (warm caches) or the slower one (a busy
    # neighbour), and the machine's speed drifts over minutes.
    plain_times, ours_times = [], []
    for repeat in range(repeats):
        for who in (("plain", "ours") if repeat % 2 == 0 else ("ours", "plain")):
            model = setup.fresh()
            if who == "plain":
                model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=setup.loss)
                plain_times.append(setup.fit(model, epochs))
            else:
                run = FineTune(model, [Phase("all", epochs=epochs)], optimizer=keras.optimizers.Adam(1e-4), loss=setup.loss)
                ours_times.append(setup.fit(run))
    return plain_times, ours_times


def _disagreement(kernels: list) -> float:
    """The largest relative difference between the first kernel and the others."""
    values = [keras.ops.convert_to_numpy(k.value) for k in kernels]
    return max(float(np.max(np.abs(values[0] - v) / (np.abs(values[0]) + 1e-6))) for v in values[1:])


def cache_benchmark(*, images: int = 512, image_size: int = 96, epochs: int = 10, batch_size: int = 32,
                    unfrozen_epochs: int = 2, repeats: int = 4, seed: int = 0, say=print) -> dict[str, float]:
    """Runs the measurements; returns the times, ratios and the cache size."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.random((images, image_size, image_size, 3), dtype=np.float32)
    y = rng.integers(0, 5, images)
    setup = _Setup(x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True), image_size,
                   _model(image_size, 5).get_weights(), batch_size)
    t_plain, plain = _plain_frozen(setup, epochs)
    say(f"(a) plain Keras fit, frozen base:        {t_plain:8.1f} s")
    t_cached, cached, run = _frostline_cached(setup, epochs)
    cache_bytes = run.sizes[0]
    say(f"(b) frostline phase, cache='auto':       {t_cached:8.1f} s  (cache {cache_bytes:,} bytes)")
    say(f"    {run.lines[0]}")
    t_floor, head = _floor(setup, epochs)
    say(f"(c) floor: predict once + head alone:    {t_floor:8.1f} s")
    disagreement = _disagreement([m.get_layer("head").kernel for m in (plain, cached)] + [head.kernel])
    plain_times, ours_times = _unfrozen_pairs(setup, unfrozen_epochs, repeats)
    overhead = float(np.median([o / p for o, p in zip(ours_times, plain_times)]))
    say(f"unfrozen base, plain Keras fit:          {', '.join(f'{t:.1f}' for t in plain_times)} s")
    say(f"unfrozen base, frostline phase:          {', '.join(f'{t:.1f}' for t in ours_times)} s")
    say(f"unfrozen base, frostline / plain:        {', '.join(f'{o / p:.3f}' for o, p in zip(ours_times, plain_times))}"
        f"  (median {overhead:.3f})")
    return {
        "plain": t_plain, "cached": t_cached, "floor": t_floor,
        "speedup": t_plain / t_cached, "floor_ratio": t_cached / t_floor,
        "unfrozen_overhead": overhead, "cache_bytes": cache_bytes,
        "head_disagreement": disagreement, "phase_line": run.lines[0],
    }


def _say_scene(result: SceneResult) -> None:
    if result.speedup is None:
        print(f"{result.name}: {result.note}")
        return
    print(f"{result.name}: plain Keras fit {result.plain:.1f} s, frostline phase {result.frostline:.1f} s, "
          f"plain / frostline {result.speedup:.2f}" + (f"  ({result.note})" if result.note else ""))
    print(f"    {result.phase_line}")


def _summary(results: list[SceneResult]) -> None:
    print(f"{'scene':<13} {'plain':>8} {'frostline':>10} {'speed-up':>9} {'target':>7}  met")
    for r in results:
        if r.speedup is None:
            print(f"{r.name:<13} {'-':>8} {'-':>10} {'-':>9} {r.target:>7.1f}  skipped")
        else:
            print(f"{r.name:<13} {r.plain:>7.1f}s {r.frostline:>9.1f}s {r.speedup:>9.2f} {r.target:>7.1f}  "
                  f"{'yes' if r.met else 'NO'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the cache benchmark's scenes from the command line; returns the exit code (1
    when the arrays scene's trained heads disagree)."""
    args = cache_parser().parse_args(argv)
    results, last, status = [], [], 0
    if "arrays" in args.scenes:
        print("== arrays")
        result = cache_benchmark(images=args.images, image_size=args.image_size, epochs=args.epochs,
                                 batch_size=args.batch_size, unfrozen_epochs=args.unfrozen_epochs,
                                 repeats=args.repeats)
        print(f"speedup a/b {result['speedup']:.2f} (target >= 6) · floor ratio b/c {result['floor_ratio']:.3f} "
              f"(target <= 1.15) · unfrozen overhead {result['unfrozen_overhead']:.3f} (target <= 1.03) · "
              f"heads differ by {result['head_disagreement']:.2e} (relative)")
        if result["head_disagreement"] > args.tolerance:
            print(f"error: the trained heads disagree by {result['head_disagreement']:.2e} > {args.tolerance}")
            status = 1
        results.append(SceneResult("arrays", result["plain"], result["cached"], TARGETS["arrays"],
                                   result["phase_line"]))
        last.append(f"speedup={result['speedup']:.2f} floor_ratio={result['floor_ratio']:.3f} "
                    f"unfrozen_overhead={result['unfrozen_overhead']:.3f} cache_bytes={result['cache_bytes']}")
    sizes = Sizes(images=args.scene_images, image_size=args.image_size, epochs=args.scene_epochs,
                  batch_size=args.batch_size)
    for name in (n for n in SCENES if n != "arrays" and n in args.scenes):
        print(f"== {name}")
        results.append(run_scene(name, sizes))
        _say_scene(results[-1])
        speedup = results[-1].speedup
        last.append(f"{name}={'skipped' if speedup is None else f'{speedup:.2f}'}")
    _summary(results)
    print(" ".join(last))
    return status


def _memory_child(mode: str, samples: int, features: int, width: int, epochs: int, batch_size: int,
                  memory_limit: int) -> dict[str, float]:
    """One training run in this process; returns its peak resident memory and timings."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, features)).astype("float32")
    y = rng.integers(0, 10, samples)
    # The frozen part widens each sample: its activations are width / features times the data.
    base = keras.Sequential([keras.Input((features,)), keras.layers.Dense(width, activation="relu", name="expand")],
                            name="base")
    model = keras.Sequential([keras.Input((features,)), base, keras.layers.Dense(10, name="head")], name="wide")
    cache = {"plain": False, "disk": "disk", "memory": "memory", "dataset": "disk"}[mode]
    # "dataset": the disk cache of the same arrays read from a `PyDataset`, which frostline
    # reads twice (the two-pass check) as it computes the activations.
    data = (Batches(x, y, batch_size),) if mode == "dataset" else (x, y)
    run = FineTune(model, [Phase("head", epochs=epochs, plan=Plan().freeze("base"), cache=cache)],
                   optimizer=keras.optimizers.Adam(1e-3),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   cache_memory_limit=memory_limit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    run.fit(*data, batch_size=None if mode == "dataset" else batch_size, verbose=0, shuffle=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_rss": peak, "rss_before_fit": before, "seconds": seconds,
            "activation_bytes": samples * width * 4, "data_bytes": int(x.nbytes)}


def memory_benchmark(*, samples: int = 20000, features: int = 64, width: int = 4096, epochs: int = 2,
                     batch_size: int = 256, memory_limit: int = 32 * 2**20, say=print) -> dict[str, dict]:
    """Peak resident memory of the same training with no cache, an in-memory cache and a
    disk cache (activations several times `memory_limit`), and of the disk cache again
    with four times the samples; the two disk caches again with the data read from a
    `PyDataset`; each run in a fresh process."""
    results = {}
    for label, mode, n in (("plain", "plain", samples), ("memory", "memory", samples), ("disk", "disk", samples),
                           ("disk_4x", "disk", 4 * samples), ("dataset", "dataset", samples),
                           ("dataset_4x", "dataset", 4 * samples)):
        code = (f"import json, frostline.app.bench as b; print(json.dumps(b._memory_child({mode!r}, {n}, "
                f"{features}, {width}, {epochs}, {batch_size}, {memory_limit})))")
        env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the {label} run failed:\n{done.stderr[-3000:]}")
        results[label] = r = json.loads(done.stdout.strip().splitlines()[-1])
        cache = ("no cache" if mode == "plain" else
                 f"{'disk' if mode == 'dataset' else mode} cache of {r['activation_bytes'] / 2**20:7.1f} MiB"
                 + (", PyDataset" if mode == "dataset" else ""))
        say(f"{n:>7} samples, {cache:<39}: peak RSS {r['peak_rss'] / 2**20:7.1f} MiB "
            f"(before fit {r['rss_before_fit'] / 2**20:6.1f} MiB) · {r['seconds']:5.1f} s")
    return results


def memory_main(argv: Sequence[str] | None = None) -> int:
    """`frostline bench memory`: peak memory of a disk cache larger than its limit;
    returns the exit code (1 when the disk cache's memory grew with the data)."""
    args = memory_parser().parse_args(argv)
    limit = int(args.memory_limit_mb * 2**20)
    r = memory_benchmark(samples=args.samples, features=args.features, width=args.width, epochs=args.epochs,
                         batch_size=args.batch_size, memory_limit=limit)
    mib = lambda b: f"{b / 2**20:+.1f} MiB"  # noqa: E731
    cache, cache_4x = r["disk"]["activation_bytes"], r["disk_4x"]["activation_bytes"]
    growth = r["disk_4x"]["peak_rss"] - r["disk"]["peak_rss"]
    dataset_growth = r["dataset_4x"]["peak_rss"] - r["dataset"]["peak_rss"]
    print(f"memory limit {limit / 2**20:.1f} MiB; activations {cache / limit:.1f}x and {cache_4x / limit:.1f}x the limit. "
          f"Peak RSS over no cache: in-memory cache {mib(r['memory']['peak_rss'] - r['plain']['peak_rss'])}, "
          f"disk cache {mib(r['disk']['peak_rss'] - r['plain']['peak_rss'])}, disk cache of a PyDataset "
          f"{mib(r['dataset']['peak_rss'] - r['plain']['peak_rss'])}; with 4x the samples the disk cache's peak "
          f"moved {mib(growth)} (of a PyDataset {mib(dataset_growth)}) while its activations grew "
          f"{mib(cache_4x - cache)}")
    status = 0
    for what, grew in (("disk cache", growth), ("disk cache of a PyDataset", dataset_growth)):
        if grew > limit:
            print(f"error: the {what}'s peak memory grew by {grew / 2**20:.1f} MiB with the data, more than its limit")
            status = 1
    print(f"cache_bytes={cache} memory_limit={limit} plain_peak_rss={r['plain']['peak_rss']} "
          f"memory_peak_rss={r['memory']['peak_rss']} disk_peak_rss={r['disk']['peak_rss']} "
          f"disk_4x_cache_bytes={cache_4x} disk_4x_peak_rss={r['disk_4x']['peak_rss']} "
          f"dataset_peak_rss={r['dataset']['peak_rss']} dataset_4x_peak_rss={r['dataset_4x']['peak_rss']}")
    return status
