"""An image folder's datasets made ready for `fit`, so that Keras knows each epoch's
length instead of learning it by running out of data.

`keras.utils.image_dataset_from_directory(format="grain")` returns a grain `IterDataset`,
whose length Keras's grain adapter does not know: every `fit` of a phase ran its first
epoch (and its first validation) until the iterator ended, and warned "Your input ran out
of data". Giving `steps_per_epoch` alone is not enough: with it Keras keeps one iterator
across epochs, so a finite dataset runs out in the second epoch. Here the dataset repeats
and `steps_per_epoch` (and `validation_steps`) are the folder's batches, so every epoch is
one pass, in the same order the dataset gives. And `shuffle` is False for any dataset:
Keras does not shuffle a dataset (it warns that `shuffle=True` is ignored); the folder's
dataset is shuffled by `image_dataset_from_directory`.
"""

from __future__ import annotations

import math
from typing import Any

from frostline.cache.passes import data_kind

__all__ = ["fit_ready"]


def _batches(dataset: Any, batch_size: int) -> int | None:
    files = getattr(dataset, "file_paths", None)  # set by image_dataset_from_directory
    return math.ceil(len(files) / batch_size) if files else None


def _repeated(dataset: Any) -> Any:
    import grain

    return grain.experimental.RepeatIterDataset(dataset)


def fit_ready(x: Any, validation: Any, *, batch_size: int) -> tuple[Any, Any, dict[str, Any]]:
    """`(x, validation_data, fit_kwargs)` for `FineTune.fit` from the data `load_data`
    read: arrays are returned as they are, with no extra arguments.

    Args:
        x: The training data: arrays, or an image folder's dataset.
        validation: The validation data, or None.
        batch_size: The batch size the folder's datasets were made with.
    """
    kind = data_kind(x)
    if kind is None:
        return x, validation, {}
    kwargs: dict[str, Any] = {"shuffle": False}
    if kind == "grain dataset":
        steps = _batches(x, batch_size)
        if steps:
            x, kwargs["steps_per_epoch"] = _repeated(x), steps
        validation_steps = _batches(validation, batch_size) if validation is not None else None
        if validation_steps:
            validation, kwargs["validation_steps"] = _repeated(validation), validation_steps
    return x, validation, kwargs
