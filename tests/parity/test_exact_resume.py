"""Parity: a run stopped after an epoch and resumed with the default settings
(`shuffle=True`, no `seed`) ends with the weights of the run that was not stopped.

On TensorFlow, where Keras would shuffle arrays inside a tf.data pipeline whose state is
not in the checkpoint, frostline keys their order by the run's shuffle seed; with
`shuffle="batch"` Keras's own shuffle remains, and there the resumed run warns."""

import random

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.cache.policy import FitInputs
from frostline.train.shuffling import keyed_shuffle

BACKEND = keras.backend.backend()


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


def run(kind, directory, *, cache=False, callbacks=(), resume=False, seed=None, **fit_kwargs):
    model = build(kind)
    if resume:
        scramble()
    x, y = data(kind)
    fine_tune = fl.FineTune(model, phases(cache), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                            checkpoint_dir=directory, seed=seed)
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


@pytest.mark.parametrize("kind, cache, after", [("dropout", False, 4), ("dropout", "auto", 4), ("flip", False, 4),
                                                ("dropout", "auto", 3)])
def test_stopped_run_resumes_exactly_with_default_settings(kind, cache, after, tmp_path):
    assert_same(*stopped_and_resumed(kind, tmp_path, cache, after=after))


@pytest.mark.parametrize("kind", ["dropout", "flip"])
def test_stopped_run_resumes_exactly_without_shuffling(kind, tmp_path):
    assert_same(*stopped_and_resumed(kind, tmp_path, "auto", shuffle=False))


def test_a_seeded_run_repeats_and_shuffles_every_epoch(tmp_path):
    first, history = run("dropout", tmp_path / "a", seed=7)
    scramble()
    again, _ = run("dropout", tmp_path / "b", seed=7)
    assert_same(weights(first), weights(again))
    other, _ = run("dropout", tmp_path / "c", seed=8)
    assert not all(np.allclose(a, b) for a, b in zip(weights(first), weights(other)))  # other seed, other order


def test_shuffled_arrays_visit_every_sample_once_per_epoch_in_an_order_keyed_by_the_epoch():
    x, y = data("dropout")
    x = x.copy()
    x[:, 0] = np.arange(40)  # each sample's number in its first feature
    given = keyed_shuffle(FitInputs(x, y, batch_size=8), None, seed=5, first_epoch=0)
    if BACKEND != "tensorflow":
        assert given.x is x  # Keras's own shuffle, from generators the checkpoint holds
        return
    assert given.fit_kwargs["steps_per_epoch"] == 5 and given.y is None and given.batch_size is None

    def epochs(dataset, count):
        batches = iter(dataset)
        return [np.concatenate([next(batches)[0][:, 0].numpy() for _ in range(5)]).astype(int) for _ in range(count)]

    orders = epochs(given.x, 3)
    assert all(sorted(order) == list(range(40)) for order in orders)
    assert len({tuple(o) for o in orders}) == 3
    resumed = keyed_shuffle(FitInputs(x, y, batch_size=8), None, seed=5, first_epoch=2)
    np.testing.assert_array_equal(epochs(resumed.x, 1)[0], orders[2])
    # validation_split takes the last samples, as Keras does, and they are never trained on.
    split = keyed_shuffle(FitInputs(x, y, batch_size=8, fit_kwargs={"validation_split": 0.25}), None,
                          seed=5, first_epoch=0)
    np.testing.assert_array_equal(split.validation[0][:, 0], np.arange(30, 40))
    assert split.fit_kwargs["steps_per_epoch"] == 4 and "validation_split" not in split.fit_kwargs
    assert max(np.concatenate([b[0][:, 0].numpy() for b in split.x.take(8)])) < 30


def test_resuming_with_keras_own_tf_shuffle_warns(tmp_path):
    with pytest.raises(RuntimeError, match="stopped"):
        run("dropout", tmp_path, callbacks=[Stop(4)], shuffle="batch")
    if BACKEND == "tensorflow":
        with pytest.warns(UserWarning, match="tf.random.shuffle inside a tf.data pipeline"):
            run("dropout", tmp_path, resume=True, shuffle="batch")
    else:
        _, history = run("dropout", tmp_path, resume=True, shuffle="batch")
        assert history.epoch == [0, 1, 2, 3, 4, 5]
