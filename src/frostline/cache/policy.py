"""The frost-line split: the frozen, deterministic front of a model, cut off for caching.

While a base is frozen and runs in inference mode, every epoch of `fit` computes the
same activations again. `frost_split` finds the largest part of the graph whose outputs
cannot change during training — frozen layers in inference mode, and weightless
deterministic layers (pooling, flatten, reshape, activations, merges) fed only by them —
and cuts the model there. The trainable remainder is a new Functional model that takes
the cut tensors as inputs and shares its layers, and so its weights, with the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from frostline.errors import NotCacheable
from frostline.model.modes import is_forced_inference, layer_mode

__all__ = ["ActivationCache", "CachedBatches", "CachedPhase", "DiskActivations", "FrostSplit", "NotCacheable", "frost_split", "samples"]




@dataclasses.dataclass(frozen=True)
class FrostSplit:
    """A model cut at its frost line.

    Attributes:
        frozen: Model from the original inputs to the cut tensors.
        remainder: Model from the cut tensors to the original outputs; its layers are
            the original model's layers.
        cut: Description of the cut tensors: `(name, shape)` each.
    """

    frozen: keras.Model
    remainder: keras.Model
    cut: tuple[tuple[str, tuple], ...]


def _graph(model: keras.layers.Layer):
    """The Functional graph behind a model, or None for one that cannot be seen."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, keras.Model) and hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def _is_deterministic_when_frozen(op) -> bool:
    """Whether an operation's output depends only on its inputs during `fit`."""
    if not isinstance(op, keras.layers.Layer):
        return True  # keras.ops in a Functional graph: add, concatenate, ...
    if any(v.trainable for v in op.trainable_weights):
        return False
    if op.non_trainable_weights and layer_mode(op) == "training":
        return False  # e.g. a BatchNormalization that would update its statistics
    if getattr(op, "_seed_generators", None) and layer_mode(op) != "inference":
        return False  # Dropout, noise, random augmentation
    return layer_mode(op) != "training"


def frost_split(model: keras.Model) -> FrostSplit:
    """Cuts `model` at its frost line, as its flags and modes are now.

    Args:
        model: A Functional or Sequential model (nested models included).

    Returns:
        A `FrostSplit`.

    Raises:
        NotCacheable: for a subclassed model, or when nothing frozen and deterministic
            comes before the first trainable layer.
    """
    graph = _graph(model)
    if graph is None:
        raise NotCacheable(f"{type(model).__name__} {model.name!r} is a subclassed model whose graph cannot be seen.")
    frozen_ids: set[int] = set()  # ids of symbolic tensors fixed during training

    def run(op):
        inner = _graph(op) if isinstance(op, keras.Model) else None
        if inner is not None:
            def call_nested(*args, **kwargs):
                inputs = args[0] if len(args) == 1 else list(args)
                return inner._run_through_graph(inputs, operation_fn=run)
            return call_nested

        def call(*args, **kwargs):
            kwargs.pop("training", None)
            kwargs.pop("mask", None)
            flat = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
            outputs = op(*args, **kwargs)
            if all(id(t) in frozen_ids for t in flat) and _is_deterministic_when_frozen(op):
                frozen_ids.update(id(t) for t in keras.tree.flatten(outputs))
            return outputs
        return call

    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=f"frost_in_{i}") for i, t in enumerate(graph.inputs)]
    frozen_ids.update(id(t) for t in inputs)
    model_inputs = inputs[0] if len(inputs) == 1 else inputs
    outputs = graph._run_through_graph(model_inputs, operation_fn=run)
    flat = keras.Model(model_inputs, outputs)
    cut = []
    for node_list in flat._nodes_by_depth.values():
        for node in node_list:
            if node.is_input or not node.operation:
                continue
            if all(id(t) in frozen_ids for t in node.outputs):
                continue
            for t in node.input_tensors:
                if id(t) in frozen_ids and all(t is not c for c in cut):
                    cut.append(t)
    for t in keras.tree.flatten(outputs):
        if id(t) in frozen_ids and all(t is not c for c in cut):
            cut.append(t)
    if all(any(t is i for i in inputs) for t in cut):
        raise NotCacheable("nothing frozen and deterministic comes before the first trainable or random layer.")
    frozen = keras.Model(model_inputs, cut[0] if len(cut) == 1 else cut, name=f"{model.name}_frozen")
    remainder = keras.Model(cut[0] if len(cut) == 1 else cut, outputs, name=f"{model.name}_remainder")
    described = tuple((t.name, tuple(t.shape)) for t in cut)
    return FrostSplit(frozen, remainder, described)


@dataclasses.dataclass(frozen=True)
class CachedPhase:
    """What a phase fits: the remainder model on cached activations, or (model None)
    the whole model on the data as given. `x`, `y`, `validation`, `batch_size` and
    `fit_kwargs` are the arguments for that model's `fit`."""

    model: keras.Model | None
    x: Any
    y: Any
    validation: Any
    batch_size: int | None
    fit_kwargs: dict
    description: str
    nbytes: int = 0


def _is_arrays(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return True
    if isinstance(value, (list, tuple)) and value:
        return all(isinstance(v, np.ndarray) for v in value)
    if isinstance(value, dict) and value:
        return all(isinstance(v, np.ndarray) for v in value.values())
    return False


def samples(x: Any) -> int | None:
    """The number of samples in NumPy inputs (an array, or a list or dict of them);
    None for anything else (datasets, generators)."""
    if not _is_arrays(x):
        return None
    first = x if isinstance(x, np.ndarray) else (list(x.values())[0] if isinstance(x, dict) else x[0])
    return len(first)


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
        dtype: The stored dtype.
        count: The number of samples.
    """

    def __init__(self, folder: str, label: str, shapes: list[tuple], dtype: np.dtype, count: int):
        self.shapes = [tuple(int(d) for d in shape) for shape in shapes]
        self.dtype = np.dtype(dtype)
        self.count = count
        self.paths = [os.path.join(folder, f"{label}-{i}.npy") for i in range(len(self.shapes))]
        self._row_bytes = [int(np.prod(shape)) * self.dtype.itemsize for shape in self.shapes]
        self._offsets = []
        self._fds = []
        try:
            for path, shape in zip(self.paths, self.shapes):
                with open(path, "wb") as f:
                    header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                              "shape": (count, *shape)}
                    np.lib.format.write_array_header_2_0(f, header)
                    self._offsets.append(f.tell())
                self._fds.append(os.open(path, os.O_RDWR))
        except BaseException:
            self.close()  # the files opened before the one that failed
            raise

    @property
    def nbytes(self) -> int:
        """The activations' size in bytes, headers excluded."""
        return self.count * sum(self._row_bytes)

    def write(self, start: int, arrays: list[np.ndarray]) -> None:
        """Writes rows `start ... start + len(arrays[0])` of every file."""
        for fd, offset, row, array in zip(self._fds, self._offsets, self._row_bytes, arrays):
            data = memoryview(np.ascontiguousarray(array, dtype=self.dtype)).cast("B")
            position = offset + start * row
            while data:
                written = os.pwrite(fd, data, position)
                data, position = data[written:], position + written

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        """The rows at `indices`, in that order, one array per cut tensor."""
        indices = np.asarray(indices)
        contiguous = len(indices) > 0 and np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices)))
        out = []
        for fd, offset, row, shape in zip(self._fds, self._offsets, self._row_bytes, self.shapes):
            # Each batch in its own anonymous mapping, unmapped when the batch is
            # dropped: the C heap would keep batch-sized blocks of every thread.
            buffer = mmap.mmap(-1, max(1, row * len(indices)))
            view = memoryview(buffer)
            if contiguous:
                _read_exactly(fd, view, offset + int(indices[0]) * row)
            else:
                for k, i in enumerate(indices):
                    _read_exactly(fd, view[k * row:(k + 1) * row], offset + int(i) * row)
            out.append(np.frombuffer(buffer, dtype=self.dtype, count=len(indices) * row // self.dtype.itemsize)
                       .reshape((len(indices), *shape)))
        return out

    def close(self) -> None:
        """Closes the files (they stay on disk)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class CachedBatches(keras.utils.PyDataset):
    """Batches of disk-cached activations with their labels (and sample weights), in
    order, or reshuffled at each epoch from NumPy's random generator.

    Args:
        features: The `DiskActivations`.
        y: The labels, an array.
        sample_weight: An array, or None.
        batch_size: Samples per batch.
        shuffle: Reorder the samples at every epoch.
    """

    def __init__(self, features: DiskActivations, y: np.ndarray, sample_weight: np.ndarray | None,
                 batch_size: int, shuffle: bool):
        super().__init__()
        self.features = features
        self.y = y
        self.sample_weight = sample_weight
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.order = np.arange(features.count)

    def __len__(self) -> int:
        return math.ceil(self.features.count / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        xs = self.features.read(rows)
        x = xs[0] if len(xs) == 1 else xs
        if self.sample_weight is None:
            return x, self.y[rows]
        return x, self.y[rows], self.sample_weight[rows]

    def on_epoch_begin(self) -> None:
        if self.shuffle:
            self.order = np.random.permutation(self.features.count)


class ActivationCache:
    """Computes, stores and cleans up a phase's cached activations for `FineTune`.

    Args:
        runner: The `FineTune` (its model, loss, optimizer and distribution are used).
        memory_limit: Bytes under which `"auto"` keeps activations in memory; a disk
            cache computes as many whole batches at a time as fit in a quarter of it
            (at least one).
        directory: Where disk caches go; None: the runner's checkpoint folder, or a
            temporary one.
    """

    def __init__(self, runner, *, memory_limit: int, directory: str | os.PathLike[str] | None):
        self.runner = runner
        self.memory_limit = int(memory_limit)
        self.directory = None if directory is None else os.fspath(directory)

    def _reason_not_to_cache(self, phase, x, y, validation_data, fit_kwargs) -> str | None:
        if phase.epochs == 1:
            return "a phase of one epoch computes each activation once anyway."
        if self.runner._distributed.processes > 1:
            return "the run spans several processes, and Keras's predict cannot gather activations across hosts."
        if not _is_arrays(x) or not isinstance(y, np.ndarray):
            return "the data is not arrays: a generator or dataset may give different batches each epoch."
        if validation_data is not None and not (
            isinstance(validation_data, (tuple, list)) and 2 <= len(validation_data) <= 3
            and all(_is_arrays(v) for v in validation_data)
        ):
            return "the validation data is not arrays."
        if fit_kwargs.get("validation_split"):
            return "validation_split is not supported with the cache; pass validation_data."
        if not self._anything_frozen():
            return "nothing frozen and deterministic comes before the first trainable or random layer."
        return None

    def _anything_frozen(self) -> bool:
        # Cheap: a walk of the graph costs seconds on a large model.
        model = self.runner.model
        if any(is_forced_inference(l) for l in model._flatten_layers()):
            return True
        capable = {id(v) for l in model._flatten_layers() for v in l._trainable_variables}
        return len({id(v) for v in model.trainable_weights}) < len(capable)

    @contextlib.contextmanager
    def for_phase(self, phase, x, y, validation_data, batch_size, fit_kwargs) -> Iterator[CachedPhase]:
        """Yields the `CachedPhase` for `phase` and removes disk files afterwards."""
        mode = phase.cache
        as_given = dict(x=x, y=y, validation=validation_data, batch_size=batch_size, fit_kwargs=dict(fit_kwargs))
        if mode is False:
            yield CachedPhase(None, **as_given, description="off (cache=False)")
            return
        reason = self._reason_not_to_cache(phase, x, y, validation_data, fit_kwargs)
        split = None
        if reason is None:
            try:
                split = frost_split(self.runner.model)
            except NotCacheable as e:
                reason = str(e)
        if reason is not None:
            if mode != "auto":
                raise NotCacheable(f"Phase {phase.name!r} asks for cache={mode!r}, which cannot apply: {reason}")
            yield CachedPhase(None, **as_given, description=f"off, plain fit: {reason}")
            return
        folder = None
        stores: list[DiskActivations] = []
        try:
            n = samples(x) + (samples(validation_data[0]) if validation_data is not None else 0)
            dtype = np.dtype(phase.cache_dtype or keras.backend.floatx())
            per_sample = sum(int(np.prod(shape[1:])) for _, shape in split.cut) * dtype.itemsize
            estimate = n * per_sample
            storage = mode if mode != "auto" else ("memory" if estimate <= self.memory_limit else "disk")
            batch = batch_size or 32
            cut = ", ".join(f"{shape[1:]}" for _, shape in split.cut)
            description = f"{storage}, {estimate:,} bytes of activations at the frost line {cut}"
            if storage == "memory":
                features = self._in_memory(split, x, batch, dtype)
                validation = None
                if validation_data is not None:
                    validation = (self._in_memory(split, validation_data[0], batch, dtype), *validation_data[1:])
                yield CachedPhase(split.remainder, features, y, validation, batch_size, dict(fit_kwargs),
                                  description, estimate)
                return
            base = self.directory or (
                os.path.join(self.runner.checkpoint_dir, "cache") if self.runner.checkpoint_dir else None
            )
            if base is not None:
                os.makedirs(base, exist_ok=True)
            folder = tempfile.mkdtemp(prefix="frostline-cache-", dir=base)
            kwargs = dict(fit_kwargs)
            shuffle = kwargs.pop("shuffle", True)
            kwargs["shuffle"] = False  # the batches reorder their samples; Keras would reorder whole batches
            sample_weight = kwargs.pop("sample_weight", None)
            validation_batch = kwargs.pop("validation_batch_size", None) or batch
            stores.append(self._on_disk(split, x, batch, dtype, folder, "train"))
            train = CachedBatches(stores[-1], y, sample_weight, batch, shuffle=bool(shuffle))
            validation = None
            if validation_data is not None:
                stores.append(self._on_disk(split, validation_data[0], validation_batch, dtype, folder, "validation"))
                validation = CachedBatches(stores[-1], validation_data[1],
                                           validation_data[2] if len(validation_data) > 2 else None,
                                           validation_batch, shuffle=False)
            yield CachedPhase(split.remainder, train, None, validation, None, kwargs, description, estimate)
        finally:
            for store in stores:
                store.close()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _in_memory(self, split: FrostSplit, x, batch: int, dtype):
        out = split.frozen.predict(x, batch_size=batch, verbose=0)
        outs = [np.asarray(o, dtype=dtype) for o in (out if isinstance(out, list) else [out])]
        return outs[0] if len(outs) == 1 else outs

    def _on_disk(self, split: FrostSplit, x, batch: int, dtype, folder: str, label: str) -> DiskActivations:
        n = samples(x)
        store = DiskActivations(folder, label, [shape[1:] for _, shape in split.cut], dtype, n)
        per_sample = max(1, store.nbytes // max(n, 1))
        # Whole batches, as many as fit in a quarter of the memory limit, at least one.
        chunk = max(batch, (self.memory_limit // 4 // per_sample) // batch * batch)
        try:
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                out = split.frozen.predict(_rows(x, start, stop), batch_size=batch, verbose=0)
                store.write(start, out if isinstance(out, list) else [out])
        except BaseException:
            store.close()
            raise
        return store
