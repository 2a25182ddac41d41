"""A model's own preprocessing, run once before the frozen part is cached.

A keras-hub task with a preprocessor (`BertTextClassifier`, `GemmaCausalLM`, an
`ImageClassifier`, ...) preprocesses its data inside `fit`: it batches the arrays in order
and maps `task.preprocess_samples(x, y, sample_weight)` over the batches (tokenizing,
packing, resizing; for a causal LM it also makes the labels). To cache, frostline runs the
same batches through the same function once, and trains on the results as the task would;
a preprocessor that would give other results on the next pass (random masking or
augmentation) is not cached.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from typing import Any

import keras
import numpy as np

from frostline import _keras
from frostline.cache.store import is_arrays, samples, sliced, to_numpy
from frostline.model.modes import draws_random_numbers

__all__ = ["Preprocessed", "batch_transform", "batches_arrays_in_order", "preprocess", "preprocessor_of"]


@dataclasses.dataclass(frozen=True)
class Preprocessed:
    """What the model's preprocessing made of the phase's data.

    Attributes:
        x, y, sample_weight: The preprocessed training data, arrays.
        validation: `(x, y[, sample_weight])` of the preprocessed validation data, or None.
        nbytes: Their size in bytes.
    """

    x: Any
    y: Any
    sample_weight: Any
    validation: tuple | None
    nbytes: int


def preprocessor_of(model: keras.Model) -> Any:
    """The preprocessor a model applies inside `fit` (a keras-hub task's), or None."""
    return getattr(model, "preprocessor", None)


def batches_arrays_in_order(model: keras.Model) -> bool:
    """Whether the model's own `fit` feeds arrays in order whatever `shuffle` says: a
    keras-hub task (a `PipelineModel`, with or without a preprocessor) batches them into
    a dataset, which Keras does not shuffle."""
    return callable(getattr(model, "preprocess_samples", None))


def _batches(preprocess_samples: Any, x: Any, y: Any, sample_weight: Any, batch_size: int, budget: int) -> list:
    """`preprocess_samples` over the data's batches in order, as NumPy (x, y, sw) each."""
    out, used = [], 0
    n = samples(x)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        result = preprocess_samples(sliced(x, start, stop), sliced(y, start, stop), sliced(sample_weight, start, stop))
        batch = keras.tree.map_structure(to_numpy, keras.utils.unpack_x_y_sample_weight(result))
        used += sum(a.nbytes for a in keras.tree.flatten(batch) if a is not None)
        if used > budget:
            raise _Refused(f"its preprocessed inputs take more than the memory limit ({budget:,} bytes).")
        out.append(batch)
    return out


def _concatenate(batches: list) -> tuple:
    try:
        return keras.tree.map_structure(lambda *parts: None if parts[0] is None else np.concatenate(parts), *batches)
    except ValueError as e:
        raise _Refused(f"its preprocessor gives batches of different shapes ({str(e).splitlines()[0]}).") from e


class _Refused(Exception):
    """Why the preprocessed data cannot be cached."""


def _feeding(preprocess_samples: Any, x: Any, y: Any, sample_weight: Any) -> Any:
    """`preprocess_samples`, fed as the task's own `fit` feeds it: NumPy batches, or, when
    the preprocessor refuses those, `tf.Tensor` batches (keras-hub tries a batch the
    same way and falls back to `tf.data`)."""
    try:
        preprocess_samples(x, y, sample_weight)
        return preprocess_samples
    except Exception:  # noqa: BLE001 - tried again the way tf.data would feed it
        if importlib.util.find_spec("tensorflow") is None:
            raise
    import tensorflow as tf

    as_tf = functools.partial(keras.tree.map_structure, lambda a: None if a is None else tf.convert_to_tensor(a))

    def fed_as_tensors(x, y=None, sample_weight=None):
        return preprocess_samples(as_tf(x), as_tf(y), as_tf(sample_weight))
    fed_as_tensors(x, y, sample_weight)  # raises what the preprocessor raises
    return fed_as_tensors


def _random_layer(preprocessor: Any) -> str | None:
    if not isinstance(preprocessor, keras.layers.Layer):
        return None
    for layer in _keras.all_layers(preprocessor):
        name = type(layer).__name__
        if draws_random_numbers(layer) or "MaskGenerator" in name:
            return name
    return None


def preprocess(model: keras.Model, x: Any, y: Any, sample_weight: Any, validation: Any, *,
               batch_size: int | None, memory_limit: int) -> Preprocessed | str:
    """Runs the model's preprocessor over the phase's data once, as its `fit` would.

    Args:
        model: A model with a `preprocessor` and `preprocess_samples` (a keras-hub task).
        x, y, sample_weight: The phase's training data (NumPy arrays; `y` and
            `sample_weight` may be None).
        validation: `validation_data` (a tuple of arrays), or None.
        batch_size: As in `fit`; the task preprocesses batches of this size. Defaults
            to 32 when None.
        memory_limit: The most bytes the preprocessed data may take.

    Returns:
        The `Preprocessed` data, or the reason (one sentence) it cannot be cached.
    """
    preprocessor = preprocessor_of(model)
    what = f"the model's preprocessor ({type(preprocessor).__name__})"
    run = getattr(model, "preprocess_samples", None)
    if not callable(run):
        return f"{what} has no preprocess_samples to run it before the frozen part."
    random = _random_layer(preprocessor)
    if random is not None:
        return f"{what} draws random numbers ({random}): every pass of fit preprocesses the data anew."
    if not is_arrays(x) or not all(v is None or is_arrays(v) for v in (y, sample_weight)):
        return "the data is not arrays: a generator or dataset may give different batches each epoch."
    batch = batch_size or 32
    try:
        run = _feeding(run, sliced(x, 0, batch), sliced(y, 0, batch), sliced(sample_weight, 0, batch))
        head = (sliced(x, 0, batch), sliced(y, 0, batch), sliced(sample_weight, 0, batch))
        first, again = (_batches(run, *head, batch, memory_limit) for _ in range(2))
        if not all(_equal(a, b) for a, b in zip(keras.tree.flatten(first), keras.tree.flatten(again))):
            return f"{what} gives different results for the same samples (random masking or augmentation): " \
                   "every pass of fit preprocesses them anew."
        train = _concatenate(_batches(run, x, y, sample_weight, batch, memory_limit))
        held_out = None
        if validation is not None:
            vx, vy, vw = keras.utils.unpack_x_y_sample_weight(validation if isinstance(validation, tuple) else (validation,))
            held_out = _concatenate(_batches(run, vx, vy, vw, batch, memory_limit))
    except _Refused as e:
        return f"{what} cannot run before the frozen part: {e}"
    nbytes = sum(a.nbytes for a in keras.tree.flatten((train, held_out)) if a is not None)
    if nbytes > memory_limit:
        return f"{what} cannot run before the frozen part: its preprocessed inputs take {nbytes:,} bytes, " \
               f"more than the memory limit ({memory_limit:,})."
    tx, ty, tw = train
    if ty is None:
        return f"{what} gives no labels to train on."
    validation_out = None
    if held_out is not None:
        validation_out = tuple(v for v in held_out if v is not None) if held_out[2] is None else held_out
    return Preprocessed(tx, ty, tw, validation_out, nbytes)


def _equal(a: Any, b: Any) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def batch_transform(model: keras.Model) -> Any:
    """`transform(x, y, sample_weight)` that runs the model's preprocessing on one batch
    of a dataset, as the task's own `fit` maps it over the dataset; None for a model
    without a preprocessor. The first batch chooses between NumPy and `tf.Tensor`
    feeding, as in `preprocess`.

    Raises:
        ValueError: for a preprocessor without `preprocess_samples`.
    """
    if preprocessor_of(model) is None:
        return None
    run = getattr(model, "preprocess_samples", None)
    if not callable(run):
        raise ValueError(f"the model's preprocessor ({type(preprocessor_of(model)).__name__}) has no "
                         "preprocess_samples to run it before the frozen part.")
    chosen: list = []

    def transform(x, y=None, sample_weight=None):
        if not chosen:
            chosen.append(_feeding(run, x, y, sample_weight))
        return chosen[0](x, y, sample_weight)
    return transform
