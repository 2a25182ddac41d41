"""What `fl.probe` refuses before anything passes through the model: its arguments, and data
whose inputs and labels a linear probe cannot use."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from frostline.cache.passes import data_kind
from frostline.cache.store import is_arrays, samples
from frostline.errors import FrostlineTypeError, FrostlineValueError, shorten

__all__ = ["check_arguments", "check_data", "labels", "validation_parts"]


def _positive_int(name: str, value: Any, *, zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if zero else 1):
        expected = "an int of 0 or more" if zero else "a positive int"
        raise FrostlineTypeError(f"Expected {name} to be {expected}. Received: {name}={shorten(value)}")


def check_arguments(*, cuts: Any, epochs: Any, batch_size: Any, learning_rate: Any, seed: Any, memory_limit: Any,
                    directory: Any) -> None:
    """Raises FrostlineTypeError or FrostlineValueError for an argument `probe` cannot use."""
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    _positive_int("seed", seed, zero=True)
    _positive_int("memory_limit", memory_limit, zero=True)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or \
            not np.isfinite(learning_rate) or learning_rate <= 0:
        raise FrostlineValueError(f"Expected a positive finite learning_rate. Received: {shorten(learning_rate)}")
    if not (isinstance(cuts, str) or (isinstance(cuts, (list, tuple)) and all(isinstance(c, str) for c in cuts))):
        raise FrostlineTypeError(
            f"Expected cuts='auto', a selector or a list of selectors, e.g. ['base/block_3_add']. Received: "
            f"cuts={shorten(cuts)}")
    if directory is not None:
        if not isinstance(directory, (str, os.PathLike)):
            raise FrostlineTypeError(f"Expected directory to be a folder's path. Received: {shorten(directory)}")
        if not os.path.isdir(directory):
            raise FrostlineValueError(f"Expected directory to be an existing folder. Received: {os.fspath(directory)!r}")


def _as_array(y: Any) -> Any:
    return np.asarray(y) if isinstance(y, list) and y and not isinstance(y[0], (list, dict, np.ndarray)) else y


def check_data(x: Any, y: Any, what: str) -> tuple[Any, Any]:
    """`(x, y)` with a list of labels made an array; refuses `y` beside a dataset, lengths
    that differ, and labels that are not numbers."""
    y = _as_array(y)
    if data_kind(x) is not None:
        if y is not None:
            raise FrostlineValueError(f"Expected y=None with a dataset as the {what} inputs (its batches hold the "
                                      f"labels). Received both a {data_kind(x)} and y.")
        return x, y
    if y is not None and is_arrays(x) and is_arrays(y):
        n, m = samples(x), samples(y)
        if n != m:
            raise FrostlineValueError(f"Expected as many {what} labels as inputs. Received {n} inputs and {m} labels.")
        labels(np.asarray(y), what)
    return x, y


def validation_parts(data: Any) -> tuple[Any, Any] | None:
    """`(x_val, y_val)` of a tuple or list `validation_data`, or None for a dataset."""
    if not isinstance(data, (tuple, list)):
        return None
    if len(data) == 3:
        raise FrostlineValueError("Expected validation_data=(x_val, y_val). Received three items: the probe does not "
                                  "weight its scores; leave the sample weights out.")
    if len(data) != 2:
        raise FrostlineValueError(f"Expected validation_data=(x_val, y_val). Received {len(data)} items.")
    return data[0], data[1]


def labels(y: Any, what: str) -> np.ndarray:
    """The labels as an array, refused when a linear probe cannot score them: none, several
    outputs', strings, or a label per step of a sequence (a language model's)."""
    if y is None:
        raise FrostlineValueError(f"Expected labels with the {what} data. Received inputs only: pass y "
                                  "(or a dataset of (x, y) batches).")
    if isinstance(y, (dict, list, tuple)):
        raise FrostlineValueError(f"Expected one label array for the {what} data (a single-output task). "
                                  f"Received a {type(y).__name__} of labels.")
    y = np.asarray(y)
    if y.dtype.kind in "USO":
        raise FrostlineValueError(
            f"Expected numeric {what} labels (class indices, one-hot rows or regression targets). Received "
            f"{'strings' if y.dtype.kind != 'O' else 'objects'}, e.g. {shorten(y.reshape(-1)[0].item())}: map them "
            "to class indices, e.g. with np.unique(y, return_inverse=True).")
    one_hot = y.ndim == 2 and y.shape[1] > 1 and np.isin(y, (0, 1)).all() and np.all(y.sum(axis=1) == 1)
    if y.ndim > 2 or (y.ndim == 2 and y.dtype.kind in "iub" and y.shape[1] > 1 and not one_hot):
        raise FrostlineValueError(
            f"Expected one label per {what} sample (a class index, a one-hot row or regression targets). Received "
            f"labels of shape {tuple(y.shape)}, not one-hot: several labels per sample, or a label per step of a "
            "sequence (a language model's, whose preprocessor makes them), which a linear probe on pooled features "
            "does not score.")
    return y
