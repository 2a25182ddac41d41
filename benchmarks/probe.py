"""What `fl.probe` costs: every cut against one, and against training a fixed schedule:
`KERAS_BACKEND=jax python benchmarks/probe.py [--quick] [--repeats 3]`.

On a `keras.applications.MobileNetV2` (alpha 0.35, no weights) with a new average-pooled
Dense head, and images made from scikit-learn's digits (8x8, scaled up to the input size,
grey in three channels), times in one process, alternating, the median of `--repeats`
after one round left out:

- `fl.probe(cuts="auto")`: a probe at each of the model's block boundaries;
- `fl.probe(cuts=[the deepest of them])`: one probe;
- a `FineTune` of `schedules.two_phase` on the same data: `--phase-epochs` epochs of the
  head on the frozen base, then as many with the whole base unfrozen (batch 32).

Each probe call builds and traces its own models, as a user's call does, so the times
include that. Both probes make one pass of the data through the model; the extra cuts
only add pooled outputs to it and heads to train on stored features, so the ratio
all / one stays small (the check: at most 2.5). The last line is machine-readable.
Runs on any backend.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import frostline as fl  # noqa: E402

MAX_RATIO = 2.5


def _images(samples: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(digits.target))[:samples]
    scale = -(-size // 8)
    x = np.repeat(np.repeat(digits.images[rows] / 16.0, scale, axis=1), scale, axis=2)[:, :size, :size]
    return np.repeat(x[..., None], 3, axis=-1).astype("float32"), digits.target[rows].astype("int32")


def _small_base(size: int) -> keras.Model:
    """For `--quick`: four residual blocks, a few seconds to trace where MobileNetV2 takes a minute."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    for i in range(1, 5):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"block{i}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"block{i}_bn")(y)
        x = keras.layers.ReLU(name=f"block{i}_out")(keras.layers.Add(name=f"block{i}_add")([x, y]))
    return keras.Model(inputs, x, name="small_base")


def _model(size: int, quick: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    base = _small_base(size) if quick else keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(size, size, 3), alpha=0.35)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="probed")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test")
    parser.add_argument("--samples", type=int, default=None, help="images, a quarter held out (default 512)")
    parser.add_argument("--image-size", type=int, default=None, help="default 96")
    parser.add_argument("--epochs", type=int, default=None, help="of the probe's heads (default 20, fl.probe's)")
    parser.add_argument("--phase-epochs", type=int, default=None, help="of each of the two phases (default 10)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5")
    args = parser.parse_args()
    samples = args.samples or (64 if args.quick else 384)
    size = args.image_size or (16 if args.quick else 64)
    epochs = args.epochs or (1 if args.quick else 20)
    phase_epochs = args.phase_epochs or (1 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    x, y = _images(samples, size, seed=0)
    split = samples * 3 // 4
    train, validation = (x[:split], y[:split]), (x[split:], y[split:])
    model = _model(size, args.quick)
    base = model.layers[1].name
    start = model.get_weights()
    deepest: list[str] = []

    results = []

    def probe_all():
        results.append(fl.probe(model, *train, validation_data=validation, epochs=epochs))
        return results[-1]

    def probe_one():
        return fl.probe(model, *train, validation_data=validation, cuts=deepest, epochs=epochs)

    def schedule():
        model.set_weights(start)
        phases = fl.schedules.two_phase(base=base, head_epochs=phase_epochs, finetune_epochs=phase_epochs,
                                        head_learning_rate=1e-2, finetune_learning_rate=1e-3)
        fl.FineTune(model, phases, optimizer="adam", metrics=["accuracy"], seed=0,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)).fit(
            *train, validation_data=validation, batch_size=32, verbose=0)
        model.set_weights(start)

    last = probe_all()  # the first round warms up and is left out
    deepest.append(last.rows[-1]["cut"])
    probe_one()
    schedule()
    times = {"all": [], "one": [], "schedule": []}
    for _ in range(repeats):
        for key, fn in (("all", probe_all), ("one", probe_one), ("schedule", schedule)):
            times[key].append(_timed(fn))
    median = {key: statistics.median(values) for key, values in times.items()}
    last = results[-1]
    name = "four residual blocks (--quick)" if args.quick else "MobileNetV2 alpha=0.35"
    print(f"{keras.backend.backend()} {name} at {size}x{size}: {len(last.rows)} cuts, "
          f"{split} training and {samples - split} validation images, median of {repeats}")
    print(f"probe ({epochs} epochs), every cut ({len(last.rows)}): {median['all']:.2f} s "
          f"(last call: pass {last.seconds['pass']:.2f} s, heads {last.seconds['heads']:.2f} s)")
    print(f"probe, one cut ({deepest[0]}): {median['one']:.2f} s")
    print(f"two_phase FineTune, {phase_epochs}+{phase_epochs} epochs, batch 32: {median['schedule']:.2f} s")
    ratio, against = median["all"] / median["one"], median["all"] / median["schedule"]
    print(f"probe_all={median['all']:.3f} probe_one={median['one']:.3f} schedule={median['schedule']:.3f} "
          f"cuts={len(last.rows)} all_over_one={ratio:.2f} all_over_schedule={against:.2f}")
    if ratio > MAX_RATIO:
        raise SystemExit(f"every cut took {ratio:.2f}x one cut; expected at most {MAX_RATIO}x")


if __name__ == "__main__":
    main()
