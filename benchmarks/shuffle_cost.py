"""What frostline's keyed order for shuffled arrays costs on TensorFlow:
`KERAS_BACKEND=tensorflow python benchmarks/shuffle_cost.py [--samples 50000]`.

On TensorFlow a `FineTune` gives `fit` shuffled arrays as a tf.data pipeline whose order
is keyed by (run seed, epoch), so that a resumed run sees the orders the uninterrupted
one saw (frostline.train.shuffling). This times, in one process and alternating, plain
`model.fit(x, y, shuffle=True)` and the same fit on `keyed_shuffle`'s pipeline, on a
small dense model, and prints the median of each and their ratio.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from frostline.cache.policy import FitInputs  # noqa: E402
from frostline.train.shuffling import keyed_shuffle  # noqa: E402


def _model(features: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("the keyed order is used on TensorFlow only: run with KERAS_BACKEND=tensorflow")
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, args.features), dtype=np.float32)
    y = rng.integers(0, 10, args.samples)
    plain, keyed = [], []
    for _ in range(args.repeats):
        model = _model(args.features)
        start = time.perf_counter()
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
        plain.append(time.perf_counter() - start)
        model = _model(args.features)
        inputs = keyed_shuffle(FitInputs(x, y, batch_size=args.batch_size), model, seed=1, first_epoch=0)
        start = time.perf_counter()
        model.fit(**inputs.arguments(), epochs=args.epochs, verbose=0)
        keyed.append(time.perf_counter() - start)
    a, b = statistics.median(plain), statistics.median(keyed)
    print(f"{args.samples} samples x {args.features}, {args.epochs} epochs, batch {args.batch_size}, "
          f"median of {args.repeats}:")
    print(f"  plain fit, Keras's shuffle: {a:.2f} s")
    print(f"  frostline's keyed order:    {b:.2f} s")
    print(f"  ratio keyed / plain: {b / a:.2f}")


if __name__ == "__main__":
    main()
