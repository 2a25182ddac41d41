"""The two-phase scene that the distribution scripts run: a head over a frozen
convolutional base with BatchNormalization, then one convolution unfrozen at a tenth of
the learning rate with the base in inference mode."""

import contextlib
import io
import os

import frostline as fl
import keras
import numpy as np


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    base = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(8, 3, padding="same", name="conv1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(name="relu1"),
        keras.layers.Conv2D(8, 3, padding="same", name="conv2"),
        keras.layers.BatchNormalization(name="bn2"),
        keras.layers.ReLU(name="relu2"),
    ], name="base")
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.GlobalAveragePooling2D(name="pool")(base(inputs))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(features)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden), name="net")


def phases(cache, callbacks=()) -> list:
    return [
        fl.Phase("head", epochs=3, plan=fl.Plan().freeze("base"), learning_rate=1e-2, cache=cache,
                 callbacks=callbacks),
        # conv2 trains at a tenth of the rate; bn2 stays frozen and in inference mode.
        fl.Phase("top", epochs=3, plan=fl.Plan().unfreeze("base/conv2").lr("base/conv2", 0.1).inference("base"),
                 learning_rate=1e-3, cache=cache, callbacks=callbacks),
    ]


class Snapshot(keras.callbacks.Callback):
    """At each phase's end: every weight, and which were frozen during the phase."""

    def __init__(self, store: dict, frozen: dict):
        super().__init__()
        self.store, self.frozen, self.phase = store, frozen, 0

    def on_train_begin(self, logs=None):
        self.phase += 1
        self.frozen[self.phase] = sorted(v.path for v in self.model.non_trainable_weights)

    def on_train_end(self, logs=None):
        for v in self.model.weights:
            self.store[f"{self.phase}|{v.path}"] = keras.ops.convert_to_numpy(v.value)


class StopAfter(keras.callbacks.Callback):
    """Interrupts the run as epoch `epoch` ends, before that epoch's checkpoint is
    written (the user's callbacks run first): a resume starts from the epoch before."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=64)
    xv = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    yv = rng.integers(0, 3, size=16)
    return x, y, (xv, yv)


def run(name: str, out: str, result: dict, *, distribution=None, cache="auto", build_scope=None, **kwargs):
    """One two-phase run; saves its weights after each phase and records its frozen
    variables and phase lines in `result["runs"][name]`. Returns the model."""
    x, y, validation = data()
    with build_scope() if build_scope else contextlib.nullcontext():
        model = build()
    store = {f"initial|{v.path}": keras.ops.convert_to_numpy(v.value) for v in model.weights}
    frozen: dict = {}
    audits = (fl.FreezeAudit(reference="memory"), Snapshot(store, frozen))
    runner = fl.FineTune(model, phases(cache, audits), optimizer="adam",
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                         metrics=["accuracy"], distribution=distribution, seed=5, **kwargs)
    lines = io.StringIO()
    with contextlib.redirect_stdout(lines):
        runner.fit(x, y, validation_data=validation, batch_size=16, shuffle=False, verbose=0, phase_lines=True)
    np.savez(os.path.join(out, f"{name}.npz"), **store)
    result["runs"][name] = {"frozen": frozen, "lines": lines.getvalue().splitlines()}
    return model


def resumed(out: str, distribution, build_scope=None) -> None:
    """Interrupted after epoch 4 (in phase 2), then resumed from its checkpoint; saves the
    final weights to OUT/resumed.npz."""
    x, y, validation = data()
    checkpoints = os.path.join(out, "checkpoints")
    for attempt in ("interrupted", "resumed"):
        with build_scope() if build_scope else contextlib.nullcontext():
            model = build()
        runner = fl.FineTune(model, phases("auto"), optimizer="adam",
                             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                             distribution=distribution, checkpoint_dir=checkpoints, seed=5)
        try:
            runner.fit(x, y, validation_data=validation, batch_size=16, shuffle=False, verbose=0,
                       callbacks=[StopAfter(4)] if attempt == "interrupted" else None,
                       resume=attempt == "resumed")
        except KeyboardInterrupt:
            continue
    np.savez(os.path.join(out, "resumed.npz"),
             **{f"2|{v.path}": keras.ops.convert_to_numpy(v.value) for v in model.weights})
