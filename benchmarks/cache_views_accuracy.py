"""What `Phase(cache_views=K)` costs in accuracy, and what it saves in time:
`python benchmarks/cache_views_accuracy.py [--seeds N] [--epochs E] [--labels-per-class K]`.

The demo's transfer task (`frostline demo`, `src/frostline/app/demo.py`): a small
convolutional base pretrained on scikit-learn's digits 0-4 (8x8 images), then a new 5-way
head on the frozen base (in inference mode) for the digits 5-9, trained on a few labels
per digit and tested on all the other images of 5-9. Every setting of one seed starts
from the same pretrained base and the same initial head, and trains the same epochs.

Augmentation layers in front of the frozen base (`RandomTranslation(0.125, 0.125)` with
`interpolation="nearest"`: shifts of up to one pixel, zeros shifted in):

- plain: `cache=False`, a plain Keras `fit`, fresh augmentation every epoch;
- `cache_views=K` for K = 1, 2, 4: K augmented views through the frozen base, computed
  once; epoch e trains on view e % K;
- no augmentation (no random layers), cached: the reference.

A grain `MapDataset` whose map function augments (random shifts of -1, 0 or +1 pixel in
each direction, with NumPy; read through `to_iter_dataset` without threads, so that runs
repeat), on the model without random layers: plain (`cache=False`)
against `cache_views=K` for K = 1, 2, 4 (view v is the v-th pass of the dataset).

Each run prints its phase line; the table gives the test accuracy (mean ± standard
deviation over the seeds), the mean wall time of `FineTune.fit` (compiling, computing
the views and training) and the speed-up over the plain run of the same group. The seeds
differ in pretraining, labelled images and initial head, which moves every setting's
accuracy together; "vs plain, same seed" is the mean ± standard deviation of each seed's
difference from that seed's plain run.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import threading
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import frostline as fl  # noqa: E402
from frostline.app.demo import _accuracy, _base, _classifier, _digits  # noqa: E402

# Keras's own warnings on a plain fit of a grain dataset, every run: `shuffle` is ignored
# (the dataset keeps its order), and the dataset "ran out of data" at the end of each
# epoch (it has no known length; every epoch still runs).
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed, but will be ignored")
warnings.filterwarnings("ignore", message=r"Your input ran out of data")

BATCH = 16
HEAD_LR = 3e-2  # the demo's phase 'head' has 1e-2 for 40 epochs; 3e-2 does better in 12, in every setting
PLAN = fl.Plan().freeze("base").inference("base")


def _augmentation() -> list[keras.layers.Layer]:
    """Shifts of up to one pixel (1/8 of the image), rounded to whole pixels, with zeros
    (the digits' black background) shifted in: about 44% of an image's pixels change.

    Of the augmentations tried on these 8x8 digits, it is the one that a converged,
    L2-regularised linear probe on the frozen features gained from (scikit-learn's
    logistic regression on 12 views: 0.79-0.82 to 0.87 test accuracy), where the bilinear
    `RandomTranslation(0.1, 0.1)` + `RandomRotation(0.05)` + `RandomZoom(0.1)` blurs the
    images and lost (to 0.68-0.70), and a small rotation or zoom alone barely changes an
    8x8 image. Within 12 epochs of the head every augmentation tried cost accuracy against
    none: the base was pretrained without it."""
    return [keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant", fill_value=0.0,
                                           interpolation="nearest", name="shift")]


def _pretrained_base(x_src: np.ndarray, y_src: np.ndarray, seed: int) -> list[np.ndarray]:
    """The demo's pretraining (12 epochs, Adam at 3e-3, batch 64); the base's weights."""
    keras.utils.set_random_seed(seed)
    base = _base()
    pretrain = _classifier(base, "pretrain")
    pretrain.compile(optimizer=keras.optimizers.Adam(3e-3),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pretrain.fit(x_src, y_src, batch_size=64, epochs=12, verbose=0, shuffle=True)
    return base.get_weights()


def _transfer_model(base_weights: list[np.ndarray], head_weights: list[np.ndarray], *, augment: bool,
                    seed: int) -> keras.Model:
    """The pretrained base under the new head, with augmentation layers in front of it
    or not; the random layers' seeds come from `seed`."""
    keras.utils.set_random_seed(seed)
    base = _base()
    base.set_weights(base_weights)
    if not augment:
        model = _classifier(base, "transfer")
    else:
        model = keras.Sequential([keras.Input((8, 8, 1)), *_augmentation(), base,
                                  keras.layers.Dense(5, name="head")], name="transfer")
    model.get_layer("head").set_weights(head_weights)
    return model


def _grain_dataset(x: np.ndarray, y: np.ndarray, seed: int):
    """A grain MapDataset that shifts every image by -1, 0 or +1 pixel in each direction,
    drawn afresh every time a sample is read, iterated without threads.

    The shift is drawn from a generator seeded with the seed, the sample's index and how
    many times that sample has been read, so every pass differs and a run repeats
    exactly. That needs reads in a fixed order and number: grain's default iterator maps
    in prefetch threads that read ahead, and Keras (and frostline) take the first
    batches of a fresh iterator for their shapes, so how far it had read ahead would
    change the later draws."""
    import grain

    reads: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def shift(sample):
        index, image, label = sample
        with lock:
            reads[index] += 1
            count = reads[index]
        dy, dx = np.random.default_rng([seed, index, count]).integers(-1, 2, size=2)
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
        return padded[1 + dy:9 + dy, 1 + dx:9 + dx], label

    order = np.random.default_rng(seed).permutation(len(y))  # one fixed order: the cache keeps a dataset's order
    samples = [(int(i), x[i], y[i]) for i in order]
    dataset = grain.MapDataset.source(samples).map(shift).batch(BATCH)
    return dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def _run(model: keras.Model, data: tuple, *, epochs: int, views: int | None, cache, seed: int,
         label: str) -> float:
    """Trains `model` in one phase; prints its phase line; returns the seconds of `fit`."""
    print(f"[{label}]", flush=True)
    phase = fl.Phase("head", epochs=epochs, plan=PLAN, learning_rate=HEAD_LR, cache=cache, cache_views=views)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    run = fl.FineTune(model, [phase], optimizer="adam", loss=loss, metrics=["accuracy"], seed=seed)
    x, y = data
    began = time.perf_counter()
    if y is None:  # a dataset
        run.fit(x, verbose=0, phase_lines=True)
    else:
        run.fit(x, y, batch_size=BATCH, verbose=0, phase_lines=True)
    return time.perf_counter() - began


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of every run (default 12)")
    parser.add_argument("--labels-per-class", type=int, default=30,
                        help="training images per digit 5-9 (default 30: 150 images)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 2:
        parser.error("--seeds must be at least 1 and --epochs at least 2 (one epoch is never cached)")
    if not 1 <= args.labels_per_class <= 173:
        parser.error("--labels-per-class must be between 1 and 173 (every digit keeps test images)")

    x, y = _digits()
    source = y < 5
    x_src, y_src = x[source], y[source]
    x_tgt, y_tgt = x[~source], y[~source] - 5
    K = (1, 2, 4)
    layer_rows = ["plain fit (cache=False)", *(f"cache_views={k}" for k in K), "no augmentation, cached"]
    grain_rows = ["grain, plain fit (cache=False)", *(f"grain, cache_views={k}" for k in K)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in layer_rows + grain_rows}
    print(f"digits 5-9, {args.labels_per_class} training images per digit, {args.epochs} epochs, "
          f"batch {BATCH}, seeds 0..{args.seeds - 1}; backend {keras.backend.backend()}", flush=True)

    warmed = False
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        few = np.concatenate([rng.permutation(np.flatnonzero(y_tgt == c))[:args.labels_per_class]
                              for c in range(5)])
        test = np.setdiff1d(np.arange(len(y_tgt)), few)
        x_few, y_few, x_test, y_test = x_tgt[few], y_tgt[few], x_tgt[test], y_tgt[test]
        base_weights = _pretrained_base(x_src, y_src, seed)
        keras.utils.set_random_seed(seed)
        head = keras.layers.Dense(5, name="head")
        head.build((None, 64))
        head_weights = head.get_weights()
        print(f"\nseed {seed}: {len(y_few)} training images, {len(y_test)} test images", flush=True)

        def one(name, *, augment, views, cache, data_of):
            model = _transfer_model(base_weights, head_weights, augment=augment, seed=seed)
            seconds = _run(model, data_of(), epochs=args.epochs, views=views, cache=cache, seed=seed, label=name)
            accuracy = _accuracy(model, x_test, y_test)
            print(f"  test accuracy {accuracy:.3f}, {seconds:.1f} s", flush=True)
            return accuracy, seconds

        if not warmed:  # JAX's first compilations, untimed
            print("warm-up (not counted):")
            for views, cache in ((None, False), (2, "auto")):
                model = _transfer_model(base_weights, head_weights, augment=True, seed=seed)
                _run(model, (x_few, y_few), epochs=2, views=views, cache=cache, seed=seed, label="warm-up")
            warmed = True

        arrays = lambda: (x_few, y_few)  # noqa: E731
        results[layer_rows[0]].append(one(layer_rows[0], augment=True, views=None, cache=False, data_of=arrays))
        for k, name in zip(K, layer_rows[1:4]):
            results[name].append(one(name, augment=True, views=k, cache="auto", data_of=arrays))
        results[layer_rows[4]].append(one(layer_rows[4], augment=False, views=None, cache="auto", data_of=arrays))

        dataset = lambda: (_grain_dataset(x_few, y_few, seed), None)  # noqa: E731
        results[grain_rows[0]].append(one(grain_rows[0], augment=False, views=None, cache=False, data_of=dataset))
        for k, name in zip(K, grain_rows[1:]):
            results[name].append(one(name, augment=False, views=k, cache="auto", data_of=dataset))

    print(f"\n| setting ({args.seeds} seeds, {args.epochs} epochs, {5 * args.labels_per_class} training images) "
          "| test accuracy | vs plain, same seed | time | speed-up vs plain |")
    print("|---|--:|--:|--:|--:|")
    for rows in (layer_rows, grain_rows):
        plain = results[rows[0]]
        plain_time = statistics.mean(s for _, s in plain)
        for name in rows:
            accuracies = [a for a, _ in results[name]]
            seconds = statistics.mean(s for _, s in results[name])
            paired = [a - p for a, (p, _) in zip(accuracies, plain)]
            delta = "—" if name == rows[0] else f"{statistics.mean(paired):+.3f} ± {_std(paired):.3f}"
            print(f"| {name} | {statistics.mean(accuracies):.3f} ± {_std(accuracies):.3f} | {delta} "
                  f"| {seconds:.1f} s | {plain_time / seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
