"""A phase's cache computed by reading its data as `fit` reads it: datasets (`tf.data`,
`PyDataset`, grain, torch `DataLoader`, generators with `steps_per_epoch`) and augmented
views (`Phase(cache_views=K)`, of arrays or datasets).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from frostline.cache.compute import Computed, Refused, compute_dataset, compute_views
from frostline.cache.passes import DataPasses, data_kind
from frostline.cache.split import FrostSplit
from frostline.cache.store import CachedBatches, DiskActivations, MemoryActivations, ViewEpochs
from frostline.errors import FrostlineValueError

__all__ = ["Streamed", "stream_cache"]


@dataclasses.dataclass(frozen=True)
class Streamed:
    """What a phase fits on a cache computed from passes over its data.

    Attributes:
        train: The training `CachedBatches`.
        validation: The validation `CachedBatches`, or None.
        fit_kwargs: The other arguments of the remainder's `fit`.
        description: For the phase's cache line.
        nbytes: The cached activations' size in bytes.
        callbacks: Callbacks the remainder's `fit` needs (`ViewEpochs`).
    """

    train: CachedBatches
    validation: CachedBatches | None
    fit_kwargs: dict
    description: str
    nbytes: int
    callbacks: tuple = ()


class _Stores:
    """Makes stores in memory while they fit in the budget (or as `mode` insists), on
    disk after that; closes and removes them with `cleanup`."""

    def __init__(self, mode: str, budget: int, folder: Callable[[], str | None], dtype: list,
                 cleanup: contextlib.ExitStack, memory_limit: int):
        self.mode, self.budget, self.folder, self.dtype = mode, budget, folder, dtype
        self.cleanup, self.memory_limit = cleanup, memory_limit
        self.used: list[str] = []
        self._disk: str | None = None

    def __call__(self, label: str, shapes: list, count: int) -> Any:
        row = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in zip(shapes, self.dtype))
        storage = self.mode if self.mode != "auto" else ("memory" if count * row <= self.budget else "disk")
        self.used.append(storage)
        if storage == "memory":
            self.budget -= count * row
            return MemoryActivations(shapes, self.dtype, count)
        if self._disk is None:
            base = self.folder()
            if base is not None:
                os.makedirs(base, exist_ok=True)
            self._disk = tempfile.mkdtemp(prefix="frostline-cache-", dir=base)
            self.cleanup.callback(shutil.rmtree, self._disk, ignore_errors=True)  # after the files close
        store = DiskActivations(self._disk, label, shapes, self.dtype, count)
        self.cleanup.callback(store.close)
        return store


def stream_cache(split: FrostSplit, x: Any, y: Any, validation: Any, batch_size: int | None,
                 fit_kwargs: dict, *, views: int | None, transform: Callable | None, dtype: list,
                 shapes_of: Callable[[Any], list], mode: str, memory_limit: int, folder: Callable[[], str | None],
                 cleanup: contextlib.ExitStack, first_epoch: int, what: str) -> Streamed:
    """Computes a phase's cache by reading its data.

    Args:
        split: The model's split (with `views`, made with `frost_split(views=True)`).
        x, y, validation, batch_size, fit_kwargs: The phase's data, as given to `fit`.
        views: `Phase.cache_views`, or None.
        transform: The model's preprocessing of a batch, or None.
        dtype: The stored dtype of each cut tensor.
        shapes_of: The cut shapes for a batch of inputs.
        mode: "auto", "memory" or "disk".
        memory_limit: Bytes under which "auto" keeps activations in memory.
        folder: Where disk caches go (None: a temporary folder).
        cleanup: Closes and removes what is made.
        first_epoch: The phase's first epoch as `fit` numbers it.
        what: Names the phase in errors.

    Raises:
        Refused: for data that cannot be cached, in one sentence.
        FrostlineValueError: for `views` where nothing random comes before the frozen
            part.
    """
    kwargs = dict(fit_kwargs)
    steps = kwargs.pop("steps_per_epoch", None)
    shuffle = bool(kwargs.pop("shuffle", True))
    validation_steps = kwargs.pop("validation_steps", None)
    validation_batch = kwargs.pop("validation_batch_size", None)
    sample_weight = kwargs.pop("sample_weight", None)
    kind = data_kind(x) or "arrays"
    batch = batch_size or 32
    arrays = kind == "arrays"
    if views and arrays and split.augmenting is None:
        raise FrostlineValueError(
            f"{what} has cache_views={views}, but nothing random comes before its frozen part (no random layer "
            "such as RandomFlip feeds it, and arrays are the same on every pass). Remove cache_views, or put "
            "the augmentation layers in front of the frozen base.")
    passes = DataPasses(x, y, sample_weight, batch_size=batch if arrays else None, steps_per_epoch=steps,
                        shuffle=shuffle and kind == "PyDataset", transform=transform)
    stores = _Stores(mode, memory_limit, folder, dtype, cleanup, memory_limit)
    began = time.perf_counter()
    if views:
        front = split.augmenting or split.frozen
        computed, random = compute_views(passes, front, views=views, shapes_of=shapes_of, dtype=dtype,
                                         make_store=stores, front_draws=split.augmenting is not None)
        if not random:
            raise FrostlineValueError(
                f"{what} has cache_views={views}, but nothing random comes before its frozen part: no random "
                f"layer feeds it, and the {kind} gave the same samples on every pass. Remove cache_views.")
        order = shuffle and arrays
    else:
        computed = compute_dataset(passes, split.frozen, shapes_of=shapes_of, dtype=dtype, make_store=stores,
                                   label="train")
        order = computed.shuffled
    seconds = time.perf_counter() - began
    train = CachedBatches(computed.features, computed.y, computed.sample_weight,
                          batch if arrays else computed.batch_sizes[0], order, views=computed.views,
                          batch_sizes=computed.batch_sizes)
    held_out = None
    if validation is not None:
        held_out = _validation(split, validation, validation_steps, validation_batch or batch, transform, dtype,
                               shapes_of, stores)
    kwargs["shuffle"] = False  # the batches reorder their samples themselves
    nbytes = computed.features.nbytes + (held_out.features.nbytes if held_out is not None else 0)
    storage = "memory" if all(s == "memory" for s in stores.used) else "disk"
    cut = ", ".join(f"{shape}" for shape in computed.features.shapes)
    description = f"{storage}, {nbytes:,} bytes of activations at the frost line {cut}"
    if views:
        through = f"through {', '.join(split.random_layers)}" if split.random_layers else f"from the {kind}'s passes"
        each = f"epoch e trains on view e % {views}" if views > 1 else "every epoch trains on it"
        description += f", {views} view{'s' if views > 1 else ''} {through} ({each}; computed in {seconds:.1f} s)"
    else:
        shuffled = ", reshuffled every epoch" if computed.shuffled else ""
        description += (f", from a {kind} checked to give the same samples on two passes{shuffled} "
                        f"(read and computed in {seconds:.1f} s)")
    callbacks = (ViewEpochs(train, first_epoch),) if views and views > 1 else ()
    return Streamed(train, held_out, kwargs, description, nbytes, callbacks)


def _validation(split: FrostSplit, validation: Any, steps: int | None, batch: int, transform: Callable | None,
                dtype: list, shapes_of: Callable, stores: _Stores) -> CachedBatches:
    """The validation data's activations, with the front in inference mode (random
    layers pass their inputs through, as in `evaluate`)."""
    if data_kind(validation) is not None:
        passes, check = DataPasses(validation, steps_per_epoch=steps, transform=transform), True
    else:
        vx, vy, vw = keras.utils.unpack_x_y_sample_weight(
            validation if isinstance(validation, tuple) else (validation,))
        passes, check = DataPasses(vx, vy, vw, batch_size=batch, transform=transform), False
    try:
        computed: Computed = compute_dataset(passes, split.frozen, shapes_of=shapes_of, dtype=dtype,
                                             make_store=stores, label="validation", check=check)
    except Refused as e:
        raise Refused(f"the validation data: {e}") from None
    return CachedBatches(computed.features, computed.y, computed.sample_weight, computed.batch_sizes[0], False,
                         batch_sizes=computed.batch_sizes)
