"""`frostline demo`: transfer learning from nothing, on the CPU, in about a minute.

A small convolutional base is pretrained on the digits 0-4 of scikit-learn's bundled
digits data set (8x8 images, no download). It is then transferred to the digits 5-9 with
only a few labels per class: phase 1 trains a new head on the frozen base, phase 2
unfreezes the top block with a lower learning rate. The same network trained from
scratch on the same few labels, for as many epochs as the two phases, is the comparison.

With 50 labelled images the figures of one run depend on which images were labelled and
on the initialisation about as much as on the method, so the demo runs several seeds and
prints each method's mean, spread and range. Each seed is a whole run of its own
(pretraining, labels, initialisation, batch order): its figures do not depend on the
other seeds run with it. The report, plots and model are those of the first seed.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any

import keras
import numpy as np

from frostline.train.callbacks import Reseed
from frostline.train.runner import FineTune, Phase
from frostline.plan.plan import Plan
from frostline.errors import FrostlineValueError
from frostline.app.plots import plot_frost_lines, plot_history
from frostline.inspect.report import report

__all__ = ["DemoResult", "SeedResult", "run_demo"]

METHODS = (
    ("scratch", "from scratch"),
    ("scratch_moving_bn", "from scratch, moving BN statistics"),
    ("frozen", "frozen base, new head"),
    ("finetuned", "fine-tuned (top block unfrozen)"),
)


@dataclasses.dataclass(frozen=True)
class SeedResult:
    """One seed's test accuracies on the digits 5-9."""

    seed: int
    scratch: float
    frozen: float
    finetuned: float
    scratch_moving_bn: float

    def line(self) -> str:
        """The seed's figures in one line, as the demo prints them."""
        return f"seed {self.seed}: " + " ".join(f"{key}={getattr(self, key):.3f}" for key, _ in METHODS)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Test accuracies on the digits 5-9, averaged over seeds, and the files written.

    `scratch`, `frozen`, `finetuned` and `scratch_moving_bn` are the means over `runs`, one
    `SeedResult` per seed; the files are those of the first seed's run. `scratch` is the
    network trained from scratch with its BatchNormalization statistics computed on its
    training images after training; `scratch_moving_bn` is the same network with the
    moving averages that `fit` left, which lag behind 280 steps of fast-changing weights.
    """

    scratch: float
    frozen: float
    finetuned: float
    files: dict[str, str]
    runs: tuple[SeedResult, ...]
    scratch_moving_bn: float = float("nan")

    def spread(self, method: str) -> tuple[float, float, float]:
        """(standard deviation, minimum, maximum) of `method` over the seeds.

        The standard deviation is the sample one (n - 1), 0.0 for a single seed.
        """
        values = [getattr(run, method) for run in self.runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return std, min(values), max(values)

    def wins(self, method: str, over: str) -> int:
        """On how many seeds `method` scored higher than `over`."""
        return sum(getattr(run, method) > getattr(run, over) for run in self.runs)

    def summary_line(self) -> str:
        """The machine-readable last line of the demo: the means over the seeds."""
        return (f"accuracy: scratch={self.scratch:.3f} frozen={self.frozen:.3f} finetuned={self.finetuned:.3f} "
                f"scratch_moving_bn={self.scratch_moving_bn:.3f} (mean of {len(self.runs)} seeds)")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return x, digits.target.astype("int64")


def _base() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for block, filters in ((1, 16), (2, 32), (3, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
        if block < 3:
            x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x), name="base")


def _classifier(base: keras.Model, name: str) -> keras.Model:
    return keras.Sequential([keras.Input((8, 8, 1)), base, keras.layers.Dense(5, name="head")], name=name)


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(logits, axis=1) == y))


class _Reusable:
    """A compiled classifier that each seed restarts from a fresh initialisation.

    Compiling costs ten times as much as training here, so the pretraining and the
    from-scratch networks are compiled once and get new weights and a new optimizer
    state for every seed: the same run as with a new model, in a tenth of the time.
    """

    def __init__(self, name: str, learning_rate: float, loss: keras.losses.Loss):
        self.model = _classifier(_base(), name)
        self.model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
        self.model.optimizer.build(self.model.trainable_variables)
        self._optimizer_start = [v.numpy() for v in self.model.optimizer.variables]

    def restart(self, seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)
        self.model.set_weights(_classifier(_base(), "fresh").get_weights())
        for variable, value in zip(self.model.optimizer.variables, self._optimizer_start):
            variable.assign(value)
        return self.model


def _batch_norms(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [bn for inner in getattr(layer, "layers", []) for bn in _batch_norms(inner)]


def _recompute_batch_norm(model: keras.Model, x: np.ndarray) -> None:
    """Sets every BatchNormalization's statistics to those of `x` ("precise BN").

    With 50 images, `fit`'s moving averages (momentum 0.99) trail the weights so far
    that a network which fits its training images scores near chance on them in
    inference mode on some seeds; one pass over the training images in training mode,
    with momentum 0, gives it the statistics it was trained with.
    """
    layers = _batch_norms(model)
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.momentum = 0.0
    model(x, training=True)
    for bn, momentum in zip(layers, momenta):
        bn.momentum = momentum


@dataclasses.dataclass
class _Task:
    x_src: np.ndarray
    y_src: np.ndarray
    x_tgt: np.ndarray
    y_tgt: np.ndarray
    labels_per_class: int
    epochs: Any
    loss: keras.losses.Loss
    pretrain: _Reusable
    scratch: _Reusable


def _split(task: _Task, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the digits 5-9: the labelled few, and the test set (all the others)."""
    rng = np.random.default_rng(seed)
    few = np.concatenate([rng.permutation(np.flatnonzero(task.y_tgt == c))[:task.labels_per_class]
                          for c in range(5)])
    return few, np.setdiff1d(np.arange(len(task.y_tgt)), few)


def _run_seed(task: _Task, seed: int, *, representative: bool, phase_lines: bool):
    """One seed's whole run; returns its SeedResult and, if representative, what the files show."""
    pretrain_seed, transfer_seed, scratch_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
    few, test = _split(task, seed)
    x_few, y_few = task.x_tgt[few], task.y_tgt[few]
    x_test, y_test = task.x_tgt[test], task.y_tgt[test]

    pretrain = task.pretrain.restart(pretrain_seed)
    # Reseed: each epoch shuffles from (seed, epoch), not from whatever a first fit drew while compiling.
    pretrain.fit(task.x_src, task.y_src, batch_size=64, epochs=task.epochs(30), verbose=0, shuffle=True,
                 callbacks=[Reseed(pretrain_seed)])

    keras.utils.set_random_seed(transfer_seed)
    base = _base()
    base.set_weights(pretrain.get_layer("base").get_weights())
    model = _classifier(base, "transfer")
    frozen: dict[str, float] = {}

    class AfterPhase1(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            frozen["value"] = _accuracy(model, x_test, y_test)

    phases = [
        Phase("head", epochs=task.epochs(40), plan=Plan().freeze("base").inference("base"), learning_rate=1e-2,
              callbacks=(AfterPhase1(),)),
        Phase("top block", epochs=task.epochs(30), plan=Plan().unfreeze("base/block3_*"), learning_rate=1e-3),
    ]
    run = FineTune(model, phases, optimizer="adam", loss=task.loss, metrics=["accuracy"], seed=transfer_seed)
    # The test set is validation data only for the representative run's plot: nothing is chosen by it.
    validation = (x_test, y_test) if representative else None
    history = run.fit(x_few, y_few, validation_data=validation, batch_size=16, verbose=0, phase_lines=phase_lines)
    finetuned = _accuracy(model, x_test, y_test)

    scratch_model = task.scratch.restart(scratch_seed)
    scratch_model.fit(x_few, y_few, batch_size=16, epochs=task.epochs(70), verbose=0, shuffle=True,
                      callbacks=[Reseed(scratch_seed)])
    moving_bn = _accuracy(scratch_model, x_test, y_test)
    _recompute_batch_norm(scratch_model, x_few)
    scratch = _accuracy(scratch_model, x_test, y_test)
    return SeedResult(seed, scratch, frozen["value"], finetuned, moving_bn), (history, run, model)


def run_demo(out: str = "frostline-demo", *, seed: int = 0, seeds: int = 4, labels_per_class: int = 10,
             quick: bool = False, verbose: int = 1) -> DemoResult:
    """Runs the demo over `seeds` seeds and writes its report and plots to `out`.

    Args:
        out: Output folder. Defaults to `"frostline-demo"`.
        seed: The first seed; the demo runs `seed`, `seed + 1`, ... `seed + seeds - 1`,
            and writes the files of the run with `seed`. Defaults to 0.
        seeds: How many seeds to run and average over. Defaults to 4.
        labels_per_class: Labelled images per digit for the transfer. Defaults to 10.
        quick: Fewer epochs (for tests). Defaults to False.
        verbose: 1 prints progress lines, 0 nothing. Defaults to 1.

    Returns:
        A `DemoResult`.

    Raises:
        FrostlineValueError: for `seeds` below 1, or a `labels_per_class` that leaves a
            digit without test images; before anything runs.
    """
    say = print if verbose else (lambda *a, **k: None)
    scale = 0.4 if quick else 1.0
    x, y = _digits()
    source = y < 5
    x_tgt, y_tgt = x[~source], y[~source] - 5
    fewest = int(min(np.sum(y_tgt == c) for c in range(5)))
    if not 1 <= labels_per_class < fewest:
        raise FrostlineValueError(
            f"Expected labels_per_class between 1 and {fewest - 1}, so that every digit keeps "
            f"test images. Received: labels_per_class={labels_per_class}"
        )
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise FrostlineValueError(f"Expected seeds to be a whole number, 1 or more. Received: seeds={seeds!r}")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    task = _Task(x[source], y[source], x_tgt, y_tgt, labels_per_class,
                 lambda n: max(1, int(round(n * scale))), loss,
                 _Reusable("pretrain", 3e-3, loss), _Reusable("scratch", 3e-3, loss))
    test_size = len(y_tgt) - 5 * labels_per_class
    names = f"seed {seed}" if seeds == 1 else f"seeds {seed}-{seed + seeds - 1}"
    say(f"{names}: pretraining a small convolutional base on {len(task.y_src)} images of the digits 0-4, "
        f"transferring it to the digits 5-9 with {labels_per_class} labels per class ({5 * labels_per_class} "
        f"images), training the same network from scratch on the same labels; testing on the other {test_size}")

    runs, shown = [], None
    for s in range(seed, seed + seeds):
        result, files_of = _run_seed(task, s, representative=s == seed, phase_lines=bool(verbose) and s == seed)
        shown = shown or files_of
        runs.append(result)
        say(result.line())

    history, run, model = shown
    os.makedirs(out, exist_ok=True)
    files = {
        "report": os.path.join(out, "report.md"),
        "history_plot": os.path.join(out, "history.png"),
        "frost_plot": os.path.join(out, "frostline.png"),
        "model": os.path.join(out, "model.keras"),
    }
    means = {key: statistics.fmean(getattr(r, key) for r in runs) for key, _ in METHODS}
    result = DemoResult(means["scratch"], means["frozen"], means["finetuned"], files, tuple(runs),
                        means["scratch_moving_bn"])
    table = _table(result, labels_per_class)
    with open(files["report"], "w") as f:
        f.write(f"# frostline demo\n\n{table}\n\n## The fine-tuned model (seed {seed})\n\n"
                + report(model).to_markdown())
    plot_history(history, files["history_plot"])
    plot_frost_lines(run.reports, files["frost_plot"])
    model.save(files["model"])
    say("")
    say(table)
    say(f"\nwrote {out} (seed {seed}'s run): " + ", ".join(os.path.basename(p) for p in files.values()))
    return result


def _table(result: DemoResult, labels_per_class: int) -> str:
    """The accuracy table, then how often fine-tuning won, in markdown."""
    n = len(result.runs)
    lines = [f"| digits 5-9, {labels_per_class} labels per class, {n} seed{'s' * (n > 1)} "
             f"| mean ± std | min-max | " + " ".join(f"seed {r.seed}" for r in result.runs) + " |",
             "|---|--:|--:|--:|"]
    for key, name in METHODS:
        std, low, high = result.spread(key)
        each = " ".join(f"{getattr(r, key):.3f}" for r in result.runs)
        lines.append(f"| {name} | {getattr(result, key):.3f} ± {std:.3f} | {low:.3f}-{high:.3f} | {each} |")
    lines.append("")
    ranked = sorted(METHODS, key=lambda m: getattr(result, m[0]), reverse=True)
    pairs = [f"{a[1]} beats {b[1]} on {result.wins(a[0], b[0])} of {n}" for a, b in zip(ranked, ranked[1:])]
    lines.append("Per seed: " + "; ".join(pairs) + ".")
    return "\n".join(lines)
