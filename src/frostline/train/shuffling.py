"""Shuffled arrays on TensorFlow, in an order a resumed run draws again.

On JAX and PyTorch, Keras shuffles arrays with NumPy's and torch's global generators,
whose states a checkpoint holds. On TensorFlow it shuffles them with `tf.random.shuffle`
inside the tf.data pipeline each `fit` builds, whose state cannot be saved: a run resumed
inside a phase would see other orders than the run that was not stopped. So on
TensorFlow frostline gives `fit` the same arrays as a tf.data pipeline of its own, built
the way Keras builds its own (the arrays held once, batches gathered by index, floats in
`floatx`, `validation_split` taken from the end), whose order in epoch `e` is a stateless
permutation keyed by `(run seed, e)`. The run seed is the `FineTune`'s `seed`, or drawn
once per run from NumPy's global generator (so `keras.utils.set_random_seed` makes runs
repeat), and kept in the checkpoint (docs/checkpoints.md, "Exact resume").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from frostline.cache.policy import FitInputs
from frostline.cache.preprocess import batches_arrays_in_order
from frostline.cache.store import is_arrays, samples, sliced

__all__ = ["keyed_shuffle", "keyed_shuffle_applies", "run_shuffle_seed"]


def run_shuffle_seed(seed: int | None) -> int:
    """The seed a new run keys its order by: from the run's `seed`; without one, on
    TensorFlow a draw from NumPy's global generator, elsewhere 0 (unused there)."""
    if seed is not None:
        return seed % 2**62
    if keras.backend.backend() != "tensorflow":
        return 0
    return int(np.random.randint(0, 2**62, dtype=np.int64))


def keyed_shuffle_applies(inputs: FitInputs, model: keras.Model | None = None) -> bool:
    """Whether `keyed_shuffle` replaces these inputs: on TensorFlow, array `x` (and `y`,
    `sample_weight`) fit with `shuffle=True` and without `steps_per_epoch`, by a model
    whose own `fit` would shuffle them (not a keras-hub task, which batches arrays in
    order)."""
    kwargs = inputs.fit_kwargs
    return (keras.backend.backend() == "tensorflow" and kwargs.get("shuffle", True) is True
            and (model is None or not batches_arrays_in_order(model))
            and kwargs.get("steps_per_epoch") is None and is_arrays(inputs.x)
            and all(v is None or is_arrays(v) for v in (inputs.y, kwargs.get("sample_weight")))
            and bool(samples(inputs.x)))


def _in_floatx(value: Any) -> Any:
    """As Keras's array adapter gives them: floating arrays in `floatx`."""
    floatx = np.dtype(keras.backend.floatx())
    return keras.tree.map_structure(
        lambda a: a.astype(floatx) if np.issubdtype(a.dtype, np.floating) and a.dtype != floatx else a, value)


def keyed_shuffle(inputs: FitInputs, model: keras.Model | None, *, seed: int, first_epoch: int) -> FitInputs:
    """`inputs` with array data replaced by a tf.data pipeline whose epoch `e` (as `fit`
    numbers epochs, from `first_epoch` on) visits the samples in an order keyed by
    `(seed, e)`; `inputs` themselves where `keyed_shuffle_applies` says no.

    Args:
        inputs: The phase's `FitInputs`.
        model: The model they are fit on, or None.
        seed: The run's shuffle seed.
        first_epoch: The first epoch this `fit` runs (its `initial_epoch`).

    Returns:
        `FitInputs` for the same `fit`: the dataset as `x`, `steps_per_epoch` set, and
        the `validation_split` part as `validation` when one was asked for.
    """
    if not keyed_shuffle_applies(inputs, model):
        return inputs
    import tensorflow as tf

    kwargs = dict(inputs.fit_kwargs)
    kwargs["shuffle"] = False  # the order is the dataset's; True would make Keras warn that it ignores it
    x, y, weights = inputs.x, inputs.y, kwargs.pop("sample_weight", None)
    validation = inputs.validation
    split = kwargs.pop("validation_split", 0.0) or 0.0
    count = samples(x)
    if split and validation is None:
        split_at = int(math.floor(count * (1.0 - split)))
        if split_at in (0, count):  # Keras's own error says why
            return inputs
        tail = tuple(v for v in (sliced(x, split_at, None), sliced(y, split_at, None),
                                 sliced(weights, split_at, None)) if v is not None)
        validation = tail if len(tail) > 1 else tail[0]
        x, y, weights = (sliced(v, 0, split_at) for v in (x, y, weights))
        count = split_at
    batch_size = inputs.batch_size or 32
    data = _in_floatx(tuple(v for v in (x, y, weights) if v is not None))
    key = tf.constant(seed % 2**63, tf.int64)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=tf.stack([key, epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    def gather(indices, arrays):
        return tf.nest.map_structure(lambda a: tf.gather(a, indices), arrays)

    indices = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_batches)
    dataset = tf.data.Dataset.zip((indices, tf.data.Dataset.from_tensors(data).repeat()))
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    kwargs["steps_per_epoch"] = math.ceil(count / batch_size)
    return dataclasses.replace(inputs, x=dataset, y=None, validation=validation, batch_size=None, fit_kwargs=kwargs)
