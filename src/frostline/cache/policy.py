"""When and how a phase caches: the reasons not to, memory or disk, and the arguments of
the `fit` that trains on the cache.

The policy decides from explicit values — the model as its flags are now, the phase's
epochs and cache mode, the data, the memory limit, the folders and the number of
processes — and owns what it makes: disk caches are removed when the phase ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import keras
import numpy as np

from frostline.cache.compute import Refused
from frostline.cache.passes import data_kind, data_reason
from frostline.cache.preprocess import batch_transform, batches_arrays_in_order, preprocess, preprocessor_of
from frostline.cache.split import NOTHING_FROZEN, FrostSplit, anything_frozen, frost_split
from frostline.cache.store import CachedBatches, DiskActivations, compute_in_memory, compute_on_disk, is_arrays, samples
from frostline.cache.streamed import stream_cache
from frostline.errors import FrostlineValueError, NotCacheable

__all__ = ["CachePolicy", "CachedPhase", "FitInputs", "reason_not_to_cache"]

CacheMode = Literal["auto", "memory", "disk"] | bool


@dataclasses.dataclass(frozen=True)
class FitInputs:
    """The data arguments of one `fit`.

    Attributes:
        x, y: As in `model.fit`.
        validation: `validation_data`, as in `model.fit`.
        batch_size: As in `model.fit`.
        fit_kwargs: The other arguments of `model.fit` (`shuffle`, `sample_weight`, ...).
    """

    x: Any = None
    y: Any = None
    validation: Any = None
    batch_size: int | None = None
    fit_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments for `model.fit`."""
        return dict(x=self.x, y=self.y, validation_data=self.validation, batch_size=self.batch_size,
                    **self.fit_kwargs)


@dataclasses.dataclass(frozen=True)
class CachedPhase:
    """What a phase fits: the remainder model on cached activations, or (model None)
    the whole model on the data as given.

    Attributes:
        model: The remainder of a `FrostSplit`, or None: the whole model.
        inputs: The `FitInputs` for that model's `fit`.
        description: For the phase's cache line, e.g. "memory, 800 bytes of activations
            at the frost line (5,)" or "off, plain fit: <the reason>".
        nbytes: The cached activations' size in bytes (0 without a cache).
        callbacks: Callbacks the cached `fit` needs (the one that picks each epoch's
            view).
    """

    model: keras.Model | None
    inputs: FitInputs
    description: str
    nbytes: int = 0
    callbacks: tuple = ()


def _validation_is_arrays(validation: Any, labels_optional: bool = False) -> bool:
    """`(x, y[, sample_weight])` of arrays; with `labels_optional` (a preprocessor that
    makes the labels) also `(x,)` or `x` alone."""
    if labels_optional and (is_arrays(validation) and not isinstance(validation, tuple)):
        return True
    fewest = 1 if labels_optional else 2
    return isinstance(validation, (tuple, list)) and fewest <= len(validation) <= 3 and all(is_arrays(v) for v in validation)


def reason_not_to_cache(model: keras.Model, inputs: FitInputs, *, epochs: int, processes: int = 1) -> str | None:
    """Why a phase cannot train on cached activations, in one sentence; None when it can
    (as far as can be told without walking the graph).

    Args:
        model: The model, with the phase's plan applied.
        inputs: The phase's data.
        epochs: The phase's epochs.
        processes: Processes (hosts) in the run. Defaults to 1.
    """
    if epochs == 1:
        return "a phase of one epoch computes each activation once anyway."
    if processes > 1:
        return "the run spans several processes, and Keras's predict cannot gather activations across hosts."
    # A keras-hub causal LM's preprocessor makes the labels from x.
    preprocesses = preprocessor_of(model) is not None
    labels = is_arrays(inputs.y) or (inputs.y is None and preprocesses)
    if isinstance(inputs.x, list) and inputs.x and not isinstance(inputs.x[0], np.ndarray):
        return "the data is a Python list: pass a NumPy array (np.array(x)) to cache."
    dataset = data_kind(inputs.x) is not None
    if dataset:
        reason = data_reason(inputs.x, steps_per_epoch=inputs.fit_kwargs.get("steps_per_epoch"))
        if reason is not None:
            return reason
    elif not is_arrays(inputs.x) or not labels:
        return "the data is not arrays or a dataset that Keras reads."
    if inputs.validation is not None:
        if data_kind(inputs.validation) is not None:
            reason = data_reason(inputs.validation, steps_per_epoch=inputs.fit_kwargs.get("validation_steps"))
            if reason is not None:
                return f"the validation data: {reason}"
        elif not _validation_is_arrays(inputs.validation, preprocesses):
            return "the validation data is not arrays or a dataset."
    if inputs.fit_kwargs.get("validation_split"):
        return "validation_split is not supported with the cache; pass validation_data."
    if not anything_frozen(model):
        return NOTHING_FROZEN
    return None


def _cut_shapes(split: FrostSplit, x: Any) -> list[tuple[int, ...]]:
    """Each cut tensor's shape without the batch axis, for the data's real shapes: a
    dimension the graph leaves open (a sequence length) is fixed by the arrays."""
    if all(d is not None for _, shape in split.cut for d in shape[1:]):
        return [tuple(int(d) for d in shape[1:]) for _, shape in split.cut]
    specs = keras.tree.map_structure(lambda a: keras.KerasTensor((None, *a.shape[1:]), dtype=a.dtype), x)
    if isinstance(specs, tuple):
        specs = list(specs)
    out = keras.tree.flatten(split.frozen.compute_output_spec(specs))
    shapes = [tuple(t.shape[1:]) for t in out]
    if any(d is None for shape in shapes for d in shape):
        raise NotCacheable(f"the activations at the frost line have a size the data does not fix: {shapes}.")
    return [tuple(int(d) for d in shape) for shape in shapes]


def _cut_dtypes(split: FrostSplit, dtype: np.dtype) -> list[np.dtype]:
    """The stored dtype of each cut tensor: `dtype` for floating ones; integers and
    booleans (token ids, padding masks passed through) keep their own, exactly."""
    out = keras.tree.flatten(split.frozen.outputs)
    return [dtype if keras.backend.is_float_dtype(t.dtype) else np.dtype(keras.backend.standardize_dtype(t.dtype))
            for t in out]


def _activation_bytes(shapes: list[tuple[int, ...]], inputs: FitInputs, dtypes: list[np.dtype]) -> int:
    n = samples(inputs.x) + (samples(inputs.validation[0]) if inputs.validation is not None else 0)
    return n * sum(int(np.prod(shape)) * d.itemsize for shape, d in zip(shapes, dtypes))


def _after_preprocessor(model: keras.Model) -> str:
    """The cache line's note of the model's preprocessor, or "" without one."""
    preprocessor = preprocessor_of(model)
    return "" if preprocessor is None else f", after the model's preprocessor ({type(preprocessor).__name__})"


_FAILED = {"cut": "the frost line could not be cut", "computed": "the activations could not be computed",
           "preprocessed": "the model's preprocessor failed"}


def _unexpected(error: Exception, what: str = "cut") -> str:
    """The reason for a cache that failed in an unforeseen way (`what`: "cut",
    "computed" or "preprocessed"), in one sentence."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{_FAILED[what]} ({type(error).__name__}{': ' + detail if detail else ''})."


class CachePolicy:
    """Decides, for each phase, whether it trains on cached activations, where they are
    kept, and what its `fit` is given.

    Args:
        memory_limit: Bytes under which `"auto"` keeps activations in memory; a disk
            cache computes as many whole batches at a time as fit in a quarter of it
            (at least one). Defaults to 1 GiB.
        directory: Where disk caches go. Defaults to None: `checkpoint_dir/cache`, or
            a temporary folder.
        checkpoint_dir: The run's checkpoint folder, or None. Defaults to None.
        processes: Processes (hosts) in the run; with several, nothing is cached.
            Defaults to 1.
    """

    def __init__(self, *, memory_limit: int = 2**30, directory: str | os.PathLike[str] | None = None,
                 checkpoint_dir: str | os.PathLike[str] | None = None, processes: int = 1):
        self.memory_limit = int(memory_limit)
        self.directory = None if directory is None else os.fspath(directory)
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.processes = int(processes)

    def disk_folder(self) -> str | None:
        """The folder disk caches are made in (None: the system's temporary folder)."""
        if self.directory is not None:
            return self.directory
        return os.path.join(self.checkpoint_dir, "cache") if self.checkpoint_dir else None

    @contextlib.contextmanager
    def for_phase(self, model: keras.Model, inputs: FitInputs, *, mode: CacheMode, epochs: int,
                  dtype: str | None = None, what: str = "This phase", views: int | None = None,
                  first_epoch: int = 0) -> Iterator[CachedPhase]:
        """Yields the `CachedPhase` for one phase; removes its disk files afterwards.

        Args:
            model: The model, with the phase's plan applied.
            inputs: The phase's data.
            mode: The phase's `cache`: "auto", "memory", "disk" or False.
            epochs: The phase's epochs.
            dtype: The stored dtype. Defaults to None: Keras's float type.
            what: Names the phase in errors. Defaults to "This phase".
            views: The phase's `cache_views`. Defaults to None.
            first_epoch: The phase's first epoch, as `fit` numbers it (the views are
                counted from it). Defaults to 0.

        Raises:
            NotCacheable: for "memory" or "disk" when the cache cannot apply.
            FrostlineValueError: for `views` where nothing random comes before the
                frozen part.
        """
        if mode is False:
            yield CachedPhase(None, inputs, "off (cache=False)")
            return
        given = inputs
        streamed = bool(views) or data_kind(inputs.x) is not None
        split, reason, inputs = self._split(model, inputs, epochs, views=bool(views), streamed=streamed)
        if split is not None and streamed:
            with self._streamed(split, model, inputs, given, mode=mode, views=views, dtype=dtype, what=what,
                                first_epoch=first_epoch) as phase:
                yield phase
            return
        shapes: list[tuple[int, ...]] = []
        if split is not None:
            try:
                shapes = _cut_shapes(split, inputs.x)
            except NotCacheable as e:
                split, reason = None, str(e)
            except Exception as e:  # noqa: BLE001 - "auto" never fails where plain fit works
                split, reason = None, _unexpected(e)
        if split is None:
            if mode != "auto":
                raise NotCacheable(f"{what} asks for cache={mode!r}, which cannot apply: {reason}")
            yield CachedPhase(None, given, f"off, plain fit: {reason}")
            return
        dtype = _cut_dtypes(split, np.dtype(dtype or keras.backend.floatx()))
        estimate = _activation_bytes(shapes, inputs, dtype)
        storage = mode if mode != "auto" else ("memory" if estimate <= self.memory_limit else "disk")
        cut = ", ".join(f"{shape}" for shape in shapes)
        description = f"{storage}, {estimate:,} bytes of activations at the frost line {cut}"
        description += _after_preprocessor(model)
        with contextlib.ExitStack() as cleanup:
            try:
                if storage == "memory":
                    cached = self._in_memory(split, inputs, dtype)
                else:
                    cached = self._on_disk(split, inputs, dtype, cleanup)
            except Exception as e:  # noqa: BLE001 - "auto" never fails where plain fit works
                cleanup.close()  # the disk files made so far
                if isinstance(e, OSError) and mode != "auto":
                    raise  # a full disk: the phase says so (frostline.train.faults)
                reason = _unexpected(e, "computed")
                if mode != "auto":
                    raise NotCacheable(f"{what} asks for cache={mode!r}, which failed: {reason}") from e
                cached, description = None, f"off, plain fit: {reason}"
            if cached is None:
                yield CachedPhase(None, given, description)
            else:
                yield CachedPhase(split.remainder, cached, description, estimate)

    @contextlib.contextmanager
    def _streamed(self, split: FrostSplit, model: keras.Model, inputs: FitInputs, given: FitInputs, *,
                  mode: CacheMode, views: int | None, dtype: str | None, what: str,
                  first_epoch: int) -> Iterator[CachedPhase]:
        """The `CachedPhase` of a cache computed by reading the data as `fit` does
        (datasets, and views)."""
        dtypes = _cut_dtypes(split, np.dtype(dtype or keras.backend.floatx()))
        with contextlib.ExitStack() as cleanup:
            try:
                result = stream_cache(
                    split, inputs.x, inputs.y, inputs.validation, inputs.batch_size, dict(inputs.fit_kwargs),
                    views=views, transform=batch_transform(model), dtype=dtypes,
                    shapes_of=lambda x: _cut_shapes(split, x), mode=mode, memory_limit=self.memory_limit,
                    folder=self.disk_folder, cleanup=cleanup, first_epoch=first_epoch, what=what)
            except (Refused, NotCacheable) as e:
                reason = str(e)
            except FrostlineValueError:
                raise
            except Exception as e:  # noqa: BLE001 - "auto" never fails where plain fit works
                if isinstance(e, OSError) and mode != "auto":
                    raise  # a full disk: the phase says so (frostline.train.faults)
                reason = _unexpected(e, "computed")
            else:
                yield CachedPhase(split.remainder, FitInputs(result.train, None, result.validation, None,
                                                             result.fit_kwargs),
                                  result.description + _after_preprocessor(model), result.nbytes, result.callbacks)
                return
            cleanup.close()  # the disk files made so far
            if mode != "auto":
                raise NotCacheable(f"{what} asks for cache={mode!r}, which cannot apply: {reason}")
            yield CachedPhase(None, given, f"off, plain fit: {reason}")

    def _split(self, model: keras.Model, inputs: FitInputs, epochs: int, *, views: bool = False,
               streamed: bool = False) -> tuple[FrostSplit | None, str | None, FitInputs]:
        """The split and the inputs of its frozen part (the model's preprocessor run
        over array data), or None and the reason there is none."""
        reason = reason_not_to_cache(model, inputs, epochs=epochs, processes=self.processes)
        if reason is not None:
            return None, reason, inputs
        try:
            split = frost_split(model, views=views)
        except NotCacheable as e:
            return None, str(e), inputs
        except Exception as e:  # noqa: BLE001 - "auto" never fails where plain fit works
            return None, _unexpected(e), inputs
        if streamed:
            return split, None, inputs  # the preprocessor runs on each batch as it is read
        kwargs = dict(inputs.fit_kwargs)
        if preprocessor_of(model) is None:
            if batches_arrays_in_order(model):
                kwargs["shuffle"] = False
                inputs = dataclasses.replace(inputs, fit_kwargs=kwargs)
            return split, None, inputs
        try:
            result = preprocess(model, inputs.x, inputs.y, kwargs.pop("sample_weight", None), inputs.validation,
                                batch_size=inputs.batch_size, memory_limit=self.memory_limit)
        except Exception as e:  # noqa: BLE001 - "auto" never fails where plain fit works
            return None, _unexpected(e, "preprocessed"), inputs
        if isinstance(result, str):
            return None, result, inputs
        # The task's own fit batches arrays in order and does not shuffle them.
        kwargs["shuffle"] = False
        if result.sample_weight is not None:
            kwargs["sample_weight"] = result.sample_weight
        return split, None, FitInputs(result.x, result.y, result.validation, inputs.batch_size, kwargs)

    def _in_memory(self, split: FrostSplit, inputs: FitInputs, dtype: list[np.dtype]) -> FitInputs:
        batch = inputs.batch_size or 32
        features = compute_in_memory(split.frozen, inputs.x, batch_size=batch, dtype=dtype)
        validation = None
        if inputs.validation is not None:
            held_out = compute_in_memory(split.frozen, inputs.validation[0], batch_size=batch, dtype=dtype)
            validation = (held_out, *inputs.validation[1:])
        return FitInputs(features, inputs.y, validation, inputs.batch_size, dict(inputs.fit_kwargs))

    def _on_disk(self, split: FrostSplit, inputs: FitInputs, dtype: list[np.dtype],
                 cleanup: contextlib.ExitStack) -> FitInputs:
        base = self.disk_folder()
        if base is not None:
            os.makedirs(base, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="frostline-cache-", dir=base)
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)  # runs last: after the files close
        kwargs = dict(inputs.fit_kwargs)
        shuffle = kwargs.pop("shuffle", True)
        kwargs["shuffle"] = False  # the batches reorder their samples; Keras would reorder whole batches
        sample_weight = kwargs.pop("sample_weight", None)
        batch = inputs.batch_size or 32
        validation_batch = kwargs.pop("validation_batch_size", None) or batch

        def store(x: Any, batch_size: int, label: str) -> DiskActivations:
            activations = compute_on_disk(split.frozen, x, shapes=_cut_shapes(split, x), batch_size=batch_size, dtype=dtype,
                                          folder=folder, label=label, memory_limit=self.memory_limit)
            cleanup.callback(activations.close)
            return activations

        train = CachedBatches(store(inputs.x, batch, "train"), inputs.y, sample_weight, batch, shuffle=bool(shuffle))
        validation = None
        if inputs.validation is not None:
            v = inputs.validation
            validation = CachedBatches(store(v[0], validation_batch, "validation"), v[1], v[2] if len(v) > 2 else None,
                                       validation_batch, shuffle=False)
        return FitInputs(train, None, validation, None, kwargs)
