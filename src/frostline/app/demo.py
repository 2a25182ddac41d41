"""`frostline demo`: transfer learning from nothing, on the CPU, in about a minute.

A small convolutional base is pretrained on the digits 0-4 of scikit-learn's bundled
digits data set (8x8 images, no download). It is then transferred to the digits 5-9 with
only a few labels per class: phase 1 trains a new head on the frozen base, phase 2
unfreezes the top block with a lower learning rate. The same network trained from
scratch on the same few labels is the comparison.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras
import numpy as np

from frostline.train.runner import FineTune, Phase
from frostline.plan.plan import Plan
from frostline.errors import FrostlineValueError
from frostline.app.plots import plot_frost_lines, plot_history
from frostline.inspect.report import report

__all__ = ["DemoResult", "run_demo"]


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Test accuracies on the digits 5-9 and the files written."""

    scratch: float
    frozen: float
    finetuned: float
    files: dict[str, str]

    def summary_line(self) -> str:
        """The machine-readable last line of the demo."""
        return f"accuracy: scratch={self.scratch:.3f} frozen={self.frozen:.3f} finetuned={self.finetuned:.3f}"


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


def run_demo(out: str = "frostline-demo", *, seed: int = 0, labels_per_class: int = 10,
             quick: bool = False, verbose: int = 1) -> DemoResult:
    """Runs the demo and writes its report and plots to `out`.

    Args:
        out: Output folder. Defaults to `"frostline-demo"`.
        seed: Makes the run repeatable. Defaults to 0.
        labels_per_class: Labelled images per digit for the transfer. Defaults to 10.
        quick: Fewer epochs (for tests). Defaults to False.
        verbose: 1 prints progress lines, 0 nothing. Defaults to 1.

    Returns:
        A `DemoResult`.
    """
    say = print if verbose else (lambda *a, **k: None)
    scale = 0.4 if quick else 1.0
    epochs = lambda n: max(1, int(round(n * scale)))  # noqa: E731
    keras.utils.set_random_seed(seed)
    x, y = _digits()
    rng = np.random.default_rng(seed)
    source = y < 5
    x_src, y_src = x[source], y[source]
    x_tgt, y_tgt = x[~source], y[~source] - 5
    fewest = int(min(np.sum(y_tgt == c) for c in range(5)))
    if not 1 <= labels_per_class < fewest:
        raise FrostlineValueError(
            f"Expected labels_per_class between 1 and {fewest - 1}, so that every digit keeps "
            f"test images. Received: labels_per_class={labels_per_class}"
        )
    few = np.concatenate([rng.permutation(np.flatnonzero(y_tgt == c))[:labels_per_class] for c in range(5)])
    test = np.setdiff1d(np.arange(len(y_tgt)), few)
    x_few, y_few, x_test, y_test = x_tgt[few], y_tgt[few], x_tgt[test], y_tgt[test]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    say(f"pretraining a small convolutional base on {len(y_src)} images of the digits 0-4")
    base = _base()
    pretrain = _classifier(base, "pretrain")
    pretrain.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    pretrain.fit(x_src, y_src, batch_size=64, epochs=epochs(12), verbose=0, shuffle=True)

    say(f"transferring to the digits 5-9 with {labels_per_class} labels per class ({len(y_few)} images); "
        f"testing on {len(y_test)}")
    model = _classifier(base, "transfer")
    frozen_accuracy: dict[str, float] = {}

    class AfterPhase1(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            frozen_accuracy["value"] = _accuracy(model, x_test, y_test)

    phases = [
        Phase("head", epochs=epochs(40), plan=Plan().freeze("base").inference("base"), learning_rate=1e-2, callbacks=(AfterPhase1(),)),
        Phase("top block", epochs=epochs(30), plan=Plan().unfreeze("base/block3_*"), learning_rate=1e-3),
    ]
    run = FineTune(model, phases, optimizer="adam", loss=loss, metrics=["accuracy"], seed=seed)
    history = run.fit(x_few, y_few, validation_data=(x_test, y_test), batch_size=16, verbose=0,
                      phase_lines=bool(verbose))
    finetuned = _accuracy(model, x_test, y_test)

    say("training the same network from scratch on the same labels")
    keras.utils.set_random_seed(seed + 1)
    scratch_model = _classifier(_base(), "scratch")
    scratch_model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    scratch_model.fit(x_few, y_few, batch_size=16, epochs=epochs(70), verbose=0)
    scratch = _accuracy(scratch_model, x_test, y_test)

    os.makedirs(out, exist_ok=True)
    files = {
        "report": os.path.join(out, "report.md"),
        "history_plot": os.path.join(out, "history.png"),
        "frost_plot": os.path.join(out, "frostline.png"),
        "model": os.path.join(out, "model.keras"),
    }
    result = DemoResult(scratch, frozen_accuracy["value"], finetuned, files)
    table = _table(result, labels_per_class)
    with open(files["report"], "w") as f:
        f.write("# frostline demo\n\n" + table + "\n\n## The fine-tuned model\n\n" + report(model).to_markdown())
    plot_history(history, files["history_plot"])
    plot_frost_lines(run.reports, files["frost_plot"])
    model.save(files["model"])
    say("")
    say(table)
    say(f"\nwrote {out}: " + ", ".join(os.path.basename(p) for p in files.values()))
    return result


def _table(result: DemoResult, labels_per_class: int) -> str:
    rows: list[tuple[str, Any]] = [
        ("from scratch", result.scratch),
        ("frozen base, new head", result.frozen),
        ("fine-tuned (top block unfrozen)", result.finetuned),
    ]
    lines = [f"| digits 5-9, {labels_per_class} labels per class | test accuracy |", "|---|--:|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in rows]
    return "\n".join(lines)
