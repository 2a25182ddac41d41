"""Where cached activations live: in memory as arrays, or on disk as `.npy` files read a
batch at a time; and computing them from the frozen front of a split model."""

from __future__ import annotations

import mmap
import os
from typing import Any

import keras
import numpy as np

__all__ = ["CachedBatches", "DiskActivations", "MemoryActivations", "ViewEpochs", "compute_in_memory",
           "compute_on_disk", "is_arrays", "per_tensor", "samples", "sliced", "to_numpy"]


def is_arrays(value: Any) -> bool:
    """Whether `value` is a NumPy array, or a non-empty list, tuple or dict of them."""
    if isinstance(value, np.ndarray):
        return True
    if isinstance(value, (list, tuple)) and value:
        return all(isinstance(v, np.ndarray) for v in value)
    if isinstance(value, dict) and value:
        return all(isinstance(v, np.ndarray) for v in value.values())
    return False


def samples(x: Any) -> int | None:
    """The number of samples in NumPy inputs (an array, or a list or dict of them);
    None for anything else (datasets, generators).

    Example:

    >>> import numpy as np
    >>> samples({"a": np.zeros((5, 2)), "b": np.zeros((5,))}), samples(iter([]))
    (5, None)
    """
    if not is_arrays(x):
        return None
    first = x if isinstance(x, np.ndarray) else (list(x.values())[0] if isinstance(x, dict) else x[0])
    return len(first)


def sliced(value: Any, start: int, stop: int | None) -> Any:
    """Samples `start` to `stop` of an array, or of each array in a list, tuple or dict;
    None stays None."""
    return None if value is None else keras.tree.map_structure(lambda a: a[start:stop], value)


def to_numpy(value: Any) -> Any:
    """`value` as a NumPy array (a `tf.Tensor` or `torch.Tensor` through its `numpy()`);
    None stays None."""
    if value is None or isinstance(value, np.ndarray):
        return value
    if hasattr(value, "numpy"):  # tf.Tensor, torch.Tensor
        return np.asarray(value.numpy())
    return np.asarray(value)


def _contiguous(indices: np.ndarray) -> bool:
    """Whether `indices` are consecutive rows, in order."""
    return len(indices) > 0 and np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices)))


def per_tensor(dtype: Any, count: int) -> list[np.dtype]:
    """One NumPy dtype per cut tensor, from one dtype or a sequence of them."""
    if isinstance(dtype, (list, tuple)):
        return [np.dtype(d) for d in dtype]
    return [np.dtype(dtype)] * count


def _rows(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, np.ndarray):
        return x[start:stop]
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return [v[start:stop] for v in x]


def _read_exactly(fd: int, view: memoryview, position: int) -> None:
    while view:
        done = os.preadv(fd, [view], position)
        if done == 0:
            raise OSError(f"The activation cache file ended early (at byte {position}).")
        view, position = view[done:], position + done


class DiskActivations:
    """Activations in `.npy` files, written a chunk at a time and read a batch at a time
    with plain file reads. No file is memory-mapped, so the process holds only the
    batches in flight however large the files grow; the operating system's file cache
    (which gives memory back under pressure) does the rest.

    Args:
        folder: Where the files go (one per cut tensor).
        label: File name prefix, e.g. "train".
        shapes: Each cut tensor's shape without the batch axis.
        dtype: The stored dtype, or one per cut tensor.
        count: The number of samples.
    """

    def __init__(self, folder: str, label: str, shapes: list[tuple], dtype: Any, count: int):
        self.shapes = [tuple(int(d) for d in shape) for shape in shapes]
        self.dtypes = per_tensor(dtype, len(self.shapes))
        self.count = count
        self.paths = [os.path.join(folder, f"{label}-{i}.npy") for i in range(len(self.shapes))]
        self._row_bytes = [int(np.prod(shape)) * d.itemsize for shape, d in zip(self.shapes, self.dtypes)]
        self._offsets: list[int] = []
        self._fds: list[int] = []
        try:
            for path, shape, d in zip(self.paths, self.shapes, self.dtypes):
                self._offsets.append(self._write_header(path, shape, d))
                self._fds.append(os.open(path, os.O_RDWR))
        except BaseException:
            self.close()  # the files opened before the one that failed
            raise

    def _write_header(self, path: str, shape: tuple, dtype: np.dtype) -> int:
        """Writes a `.npy` header for `count` rows of `shape`; returns where data begins."""
        with open(path, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": (self.count, *shape)}
            np.lib.format.write_array_header_2_0(f, header)
            return f.tell()

    @property
    def nbytes(self) -> int:
        """The activations' size in bytes, headers excluded."""
        return self.count * sum(self._row_bytes)

    def write(self, start: int, arrays: list[np.ndarray]) -> None:
        """Writes rows `start ... start + len(arrays[0])` of every file."""
        for fd, offset, row, array, dtype in zip(self._fds, self._offsets, self._row_bytes, arrays, self.dtypes):
            data = memoryview(np.ascontiguousarray(array, dtype=dtype)).cast("B")
            position = offset + start * row
            while data:
                written = os.pwrite(fd, data, position)
                data, position = data[written:], position + written

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        """The rows at `indices`, in that order, one array per cut tensor."""
        indices = np.asarray(indices)
        contiguous = _contiguous(indices)
        out = []
        for fd, offset, row, shape, dtype in zip(self._fds, self._offsets, self._row_bytes, self.shapes, self.dtypes):
            # Each batch in its own anonymous mapping, unmapped when the batch is
            # dropped: the C heap would keep batch-sized blocks of every thread.
            buffer = mmap.mmap(-1, max(1, row * len(indices)))
            view = memoryview(buffer)
            if contiguous:
                _read_exactly(fd, view, offset + int(indices[0]) * row)
            else:
                for k, i in enumerate(indices):
                    _read_exactly(fd, view[k * row:(k + 1) * row], offset + int(i) * row)
            out.append(np.frombuffer(buffer, dtype=dtype, count=len(indices) * row // dtype.itemsize)
                       .reshape((len(indices), *shape)))
        return out

    def close(self) -> None:
        """Closes the files (they stay on disk)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class MemoryActivations:
    """Activations in arrays in memory, written and read like `DiskActivations`.

    Args:
        shapes: Each cut tensor's shape without the batch axis.
        dtype: The stored dtype, or one per cut tensor.
        count: The number of samples.
    """

    def __init__(self, shapes: list[tuple], dtype: Any, count: int):
        self.shapes = [tuple(int(d) for d in shape) for shape in shapes]
        self.dtypes = per_tensor(dtype, len(self.shapes))
        self.count = count
        self.arrays = [np.empty((count, *shape), dtype=d) for shape, d in zip(self.shapes, self.dtypes)]

    @property
    def nbytes(self) -> int:
        """The activations' size in bytes."""
        return sum(a.nbytes for a in self.arrays)

    def write(self, start: int, arrays: list[np.ndarray]) -> None:
        """Writes rows `start ... start + len(arrays[0])`."""
        for store, array in zip(self.arrays, arrays):
            store[start:start + len(array)] = array

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        """The rows at `indices`, in that order, one array per cut tensor."""
        indices = np.asarray(indices)
        if _contiguous(indices):
            return [a[indices[0]:indices[0] + len(indices)] for a in self.arrays]
        return [a[indices] for a in self.arrays]

    def close(self) -> None:
        """Nothing to close."""


class CachedBatches(keras.utils.PyDataset):
    """Batches of cached activations with their labels (and sample weights): in order
    (in the batches of the pass they were read in, when `batch_sizes` is given), or
    reshuffled at each epoch from NumPy's random generator. With several views, epoch
    `e` of the phase (`epoch`, which `ViewEpochs` sets) reads view `e % views`.

    Args:
        features: A `DiskActivations` or `MemoryActivations`; with views, view `v`
            holds rows `v * n ... (v + 1) * n - 1`.
        y: The labels: an array (or structure of arrays) with a row per feature row.
        sample_weight: Likewise, or None.
        batch_size: Samples per batch.
        shuffle: Reorder the samples of the view at every epoch.
        views: How many views `features` holds. Defaults to 1.
        batch_sizes: Without `shuffle`, the batches' sizes, in order, summing to `n`.
            Defaults to None: `batch_size` each, the last one shorter.
    """

    def __init__(self, features: Any, y: Any, sample_weight: Any, batch_size: int, shuffle: bool,
                 *, views: int = 1, batch_sizes: list[int] | None = None):
        super().__init__()
        self.features = features
        self.y = y
        self.sample_weight = sample_weight
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.views = views
        self.per_view = features.count // views
        sizes = batch_sizes if (batch_sizes and not shuffle) else None
        if sizes is None:
            sizes = [min(batch_size, self.per_view - s) for s in range(0, self.per_view, batch_size)]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.epoch = 0  # set by `ViewEpochs`: Keras calls on_epoch_begin more than once per epoch
        self.order = np.arange(self.per_view)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index: int):
        rows = self.order[self.starts[index]:self.starts[index + 1]] + self.view * self.per_view
        xs = self.features.read(rows)
        x = xs[0] if len(xs) == 1 else xs
        y = None if self.y is None else keras.tree.map_structure(lambda a: a[rows], self.y)
        if self.sample_weight is None:
            return x, y
        return x, y, keras.tree.map_structure(lambda a: a[rows], self.sample_weight)

    @property
    def view(self) -> int:
        """The view this epoch reads."""
        return self.epoch % self.views

    def on_epoch_begin(self) -> None:
        if self.shuffle:
            self.order = np.random.permutation(self.per_view)


class ViewEpochs(keras.callbacks.Callback):
    """Tells `CachedBatches` which epoch of the phase begins, so that it reads that
    epoch's view.

    Args:
        batches: The `CachedBatches`.
        first_epoch: The phase's first epoch, as `fit` numbers it.
    """

    def __init__(self, batches: CachedBatches, first_epoch: int):
        super().__init__()
        self.batches = batches
        self.first_epoch = first_epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.batches.epoch = epoch - self.first_epoch


def compute_in_memory(frozen: keras.Model, x: Any, *, batch_size: int, dtype: Any) -> Any:
    """The frozen front's outputs for `x`, as arrays of `dtype` (a list for several cut
    tensors).

    Args:
        frozen: The frozen part of a `FrostSplit`.
        x: NumPy inputs.
        batch_size: The batch size of `predict`.
        dtype: The stored dtype, or one per cut tensor.
    """
    out = frozen.predict(x, batch_size=batch_size, verbose=0)
    out = out if isinstance(out, list) else [out]
    outs = [np.asarray(o, dtype=d) for o, d in zip(out, per_tensor(dtype, len(out)))]
    return outs[0] if len(outs) == 1 else outs


def compute_on_disk(frozen: keras.Model, x: Any, *, shapes: list[tuple], batch_size: int, dtype: Any,
                    folder: str, label: str, memory_limit: int) -> DiskActivations:
    """The frozen front's outputs for `x`, written to files a chunk at a time.

    Args:
        frozen: The frozen part of a `FrostSplit`.
        x: NumPy inputs.
        shapes: The cut tensors' shapes without the batch axis.
        batch_size: The batch size of `predict`.
        dtype: The stored dtype, or one per cut tensor.
        folder: Where the files go.
        label: File name prefix, e.g. "train".
        memory_limit: A chunk is as many whole batches as fit in a quarter of this
            many bytes, and at least one.

    Returns:
        The open `DiskActivations`; the caller closes it.
    """
    n = samples(x)
    store = DiskActivations(folder, label, shapes, dtype, n)
    per_sample = max(1, store.nbytes // max(n, 1))
    chunk = max(batch_size, (memory_limit // 4 // per_sample) // batch_size * batch_size)
    try:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            out = frozen.predict(_rows(x, start, stop), batch_size=batch_size, verbose=0)
            store.write(start, out if isinstance(out, list) else [out])
    except BaseException:
        store.close()
        raise
    return store
