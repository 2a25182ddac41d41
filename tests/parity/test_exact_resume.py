"""Parity: a run stopped after an epoch and resumed with the default settings
(`shuffle=True`, no `seed`) ends with the weights of the run that was not stopped.

On TensorFlow, Keras shuffles arrays inside a tf.data pipeline whose state is not in the
checkpoint: there the resumed run warns, and is exact with `shuffle=False`."""

import random

import keras
import numpy as np
import pytest

import frostline as fl

BACKEND = keras.backend.backend()
SHUFFLE_IS_EXACT = BACKEND != "tensorflow"


class Stop(keras.callbacks.Callback):
    """Raises in the middle of the epoch after `after` epochs."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.after and batch == 1:
            raise RuntimeError("stopped")


def build(kind):
    """The model, its initial weights the same every time it is built."""
    keras.utils.set_random_seed(3)
    if kind == "flip":
        inputs = keras.Input((6, 6, 1))
        front = [keras.layers.RandomFlip("horizontal_and_vertical", name="flip")]
        base = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
                                 keras.layers.Flatten(name="flat"), keras.layers.Dense(8, activation="relu", name="d2")],
                                name="base")
    else:
        inputs = keras.Input((8,))
        front = []
        base = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="d1"),
                                 keras.layers.Dense(8, activation="relu", name="d2")], name="base")
    x = inputs
    for layer in front:
        x = layer(x)
    x = base(x)
    x = keras.layers.Dropout(0.4, name="drop")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="m")


def phases(cache):
    return [
        fl.Phase("head", epochs=3, plan=fl.Plan().freeze("base"), learning_rate=1e-2, cache=cache),
        fl.Phase("top", epochs=3, plan=fl.Plan().unfreeze("d2"), learning_rate=1e-3),
    ]


def data(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 6, 1) if kind == "flip" else (40, 8)).astype("float32")
    return x, rng.integers(0, 3, size=40)


def scramble():
    """What a fresh process would have: other global random states than the run's."""
    random.seed(12345)
    np.random.seed(12345)
    if BACKEND == "torch":
        import torch

        torch.manual_seed(12345)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.random.set_seed(12345)


def run(kind, directory, *, cache=False, callbacks=(), resume=False, **fit_kwargs):
    model = build(kind)
    if resume:
        scramble()
    x, y = data(kind)
    fine_tune = fl.FineTune(model, phases(cache), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                            checkpoint_dir=directory)
    history = fine_tune.fit(x, y, batch_size=8, verbose=0, callbacks=list(callbacks), resume=resume, **fit_kwargs)
    return model, history


def weights(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


def stopped_and_resumed(kind, tmp_path, cache=False, *, after=4, **fit_kwargs):
    """The weights of the uninterrupted run and of the one stopped after `after` epochs
    (4: inside phase 2, which runs epochs 3 to 5; 3: at the end of phase 1) and resumed
    in what looks like a fresh process."""
    scramble()
    full, _ = run(kind, tmp_path / "full", cache=cache, **fit_kwargs)
    scramble()
    with pytest.raises(RuntimeError, match="stopped"):
        run(kind, tmp_path / "cut", cache=cache, callbacks=[Stop(after)], **fit_kwargs)
    assert (tmp_path / "cut" / "latest").read_text() == f"epoch-{after:05d}"
    resumed, history = run(kind, tmp_path / "cut", cache=cache, resume=True, **fit_kwargs)
    assert history.epoch == [0, 1, 2, 3, 4, 5]
    return weights(full), weights(resumed)


def assert_same(full, resumed):
    for a, b in zip(full, resumed, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.skipif(not SHUFFLE_IS_EXACT, reason="Keras shuffles arrays in tf.data on TensorFlow")
@pytest.mark.parametrize("kind, cache, after", [("dropout", False, 4), ("dropout", "auto", 4), ("flip", False, 4),
                                                ("dropout", "auto", 3)])
def test_stopped_run_resumes_exactly_with_default_settings(kind, cache, after, tmp_path):
    assert_same(*stopped_and_resumed(kind, tmp_path, cache, after=after))


@pytest.mark.parametrize("kind", ["dropout", "flip"])
def test_stopped_run_resumes_exactly_without_shuffling(kind, tmp_path):
    assert_same(*stopped_and_resumed(kind, tmp_path, "auto", shuffle=False))


@pytest.mark.skipif(SHUFFLE_IS_EXACT, reason="only TensorFlow shuffles arrays in tf.data")
def test_resuming_shuffled_arrays_on_tensorflow_warns(tmp_path):
    with pytest.raises(RuntimeError, match="stopped"):
        run("dropout", tmp_path, callbacks=[Stop(4)])
    with pytest.warns(UserWarning, match="tf.random.shuffle inside a tf.data pipeline"):
        run("dropout", tmp_path, resume=True)
