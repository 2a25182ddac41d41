"""Reading a dataset the way `fit` reads it, one pass (one epoch's batches) at a time, and
telling whether two passes give the same samples.

`fit` reads a `tf.data.Dataset`, a `keras.utils.PyDataset`, a grain dataset or a torch
`DataLoader` afresh at every epoch; a generator (or any dataset with `steps_per_epoch`)
is one stream that each epoch takes its next `steps_per_epoch` batches from. A pass
here is the same: a fresh read, or the stream's next window.

Two passes hold the same samples when the multisets of their samples' digests are equal:
every sample (the row of each input, label and sample weight, after the model's own
preprocessing) is hashed with BLAKE2b, so a map function that augments, crops or masks
at random shows up at its first changed sample. Their orders differing means the data
is shuffled.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from frostline import _keras
from frostline.cache.store import to_numpy

__all__ = ["DataPasses", "Digests", "RanOut", "data_kind", "data_reason", "digests"]

Batch = tuple[Any, Any, Any]


def data_kind(x: Any) -> str | None:
    """What kind of dataset `x` is, as `fit` sees it: "tf.data.Dataset", "PyDataset",
    "grain dataset", "torch DataLoader" or "generator"; None for anything else (arrays)."""
    modules = {c.__module__ + "." + c.__name__ for c in type(x).__mro__}
    if any(m.startswith("tensorflow.python.") and m.rsplit(".", 1)[1] in ("DatasetV2", "DistributedDataset")
           for m in modules):
        return "tf.data.Dataset"
    if isinstance(x, keras.utils.PyDataset):
        return "PyDataset"
    if any(m.startswith("grain.") and m.rsplit(".", 1)[1] in ("MapDataset", "IterDataset", "DataLoader")
           for m in modules):
        return "grain dataset"
    if any(m.startswith("torch.utils.data") and m.endswith(".DataLoader") for m in modules):
        return "torch DataLoader"
    if isinstance(x, types.GeneratorType):
        return "generator"
    return None


def _preprocessed(transform: Callable, batch: Any) -> Any:
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
    out = keras.utils.unpack_x_y_sample_weight(transform(x, y, sample_weight))
    return tuple(keras.tree.map_structure(to_numpy, v) for v in out if v is not None)


def _is_infinite(x: Any, kind: str) -> bool:
    if kind == "tf.data.Dataset":
        return int(x.cardinality()) == -1  # tf.data.INFINITE_CARDINALITY
    if kind == "PyDataset":
        return x.num_batches is None
    return False


def data_reason(x: Any, *, steps_per_epoch: int | None) -> str | None:
    """Why the dataset `x` cannot be cached, known without reading it; None when a
    reading may tell.

    Args:
        x: A dataset or generator (see `data_kind`).
        steps_per_epoch: As given to `fit`.
    """
    kind = data_kind(x)
    if kind is None:
        return f"the data ({type(x).__name__}) is not arrays or a dataset Keras reads."
    if kind == "generator" and not steps_per_epoch:
        return ("a generator without steps_per_epoch runs out after one epoch; pass steps_per_epoch, "
                "or a tf.data.Dataset or keras.utils.PyDataset.")
    if kind != "generator" and not steps_per_epoch and _is_infinite(x, kind):
        return (f"the {kind} is infinite (it repeats): frostline caches finite datasets; "
                "drop the repeat, or give steps_per_epoch.")
    if kind in ("tf.data.Dataset", "PyDataset") and steps_per_epoch and not _is_infinite(x, kind):
        batches = int(x.cardinality()) if kind == "tf.data.Dataset" else x.num_batches
        if batches >= 0 and batches != steps_per_epoch:
            return (f"steps_per_epoch ({steps_per_epoch}) is not the dataset's {batches} batches: "
                    "the epochs would see different batches.")
    return None


class Digests:
    """The samples of one pass, as 16-byte digests in the order they came.

    Args:
        hashed: Hash the samples. Defaults to True; False only counts them (where
            nothing compares the digests: arrays, or views of a random front).

    Attributes:
        order: The digests, in order (empty when not `hashed`).
        batch_sizes: The size of each batch, in order.
    """

    def __init__(self, hashed: bool = True) -> None:
        self.hashed = hashed
        self.order: list[bytes] = []
        self.batch_sizes: list[int] = []

    def add(self, batch: Batch) -> int:
        """Adds a batch's samples; returns how many it holds."""
        if self.hashed:
            new = digests(batch)
            self.order.extend(new)
            count = len(new)
        else:
            count = len(next(a for a in keras.tree.flatten(batch) if a is not None))
        self.batch_sizes.append(count)
        return count

    def __len__(self) -> int:
        return sum(self.batch_sizes)

    def counts(self) -> collections.Counter:
        """How often each digest occurs."""
        return collections.Counter(self.order)


def digests(batch: Batch) -> list[bytes]:
    """One BLAKE2b digest per sample of a batch `(x, y, sample_weight)` of arrays: its
    row of every leaf, with the leaf's dtype and row shape."""
    leaves = [np.ascontiguousarray(a) for a in keras.tree.flatten(batch) if a is not None]
    n = len(leaves[0]) if leaves else 0
    heads = [f"{a.dtype.str}{a.shape[1:]}".encode() for a in leaves]
    out = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for head, a in zip(heads, leaves):
            h.update(head)
            h.update(memoryview(a[i]).cast("B") if a[i].ndim else a[i].tobytes())
        out.append(h.digest())
    return out


class DataPasses:
    """Passes over a dataset as `fit` reads it, as NumPy `(x, y, sample_weight)` batches,
    each run through `transform` (the model's preprocessing) when one is given.

    Args:
        x: A dataset or generator, or NumPy inputs.
        y, sample_weight: With NumPy inputs, as in `fit`. Default to None.
        batch_size: With NumPy inputs, as in `fit`. Defaults to None (32).
        steps_per_epoch: As given to `fit`; with it, passes are consecutive windows of
            one stream, as `fit` reads them.
        shuffle: `fit`'s `shuffle` (a `PyDataset`'s batches are reordered with it).
        transform: `transform(x, y, sample_weight) -> batch`, or None.

    Attributes:
        kind: The dataset's kind (see `data_kind`), "arrays" for NumPy inputs.
    """

    def __init__(self, x: Any, y: Any = None, sample_weight: Any = None, *, batch_size: int | None = None,
                 steps_per_epoch: int | None = None, shuffle: bool = False, transform: Callable | None = None):
        self.kind = data_kind(x) or "arrays"
        if transform is not None and self.kind == "grain dataset":
            # As a keras-hub task's fit does: Keras reads a grain dataset's first batches
            # to learn its shapes, which raw text has none of.
            x, transform = x.map(functools.partial(_preprocessed, transform)), None
        self.adapter = _keras.data_adapter(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle)
        self.steps = steps_per_epoch
        self.transform = transform
        self._stream: Iterator | None = None

    @property
    def windowed(self) -> bool:
        """Whether passes are windows of `steps_per_epoch` batches of one stream."""
        return bool(self.steps) and (self.kind == "generator" or self.adapter.num_batches is None)

    def next_pass(self) -> Iterator[Batch]:
        """The batches of the next pass."""
        self.adapter.on_epoch_begin()
        if self.windowed:
            if self._stream is None:
                self._stream = iter(self.adapter.get_numpy_iterator())
            batches: Iterator = (next(self._stream, None) for _ in range(self.steps))
        else:
            batches = iter(self.adapter.get_numpy_iterator())
        try:
            for raw in batches:
                if raw is None:
                    raise RanOut(f"the {self.kind} ran out of data within {self.steps} steps.")
                x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(raw)
                if self.transform is not None:
                    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(self.transform(x, y, sample_weight))
                yield keras.tree.map_structure(to_numpy, (x, y, sample_weight))
        finally:
            self.adapter.on_epoch_end()  # also for a pass left early: the next one begins cleanly


class RanOut(Exception):
    """A stream ended before a pass was complete."""
