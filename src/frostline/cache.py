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
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from frostline.modes import is_forced_inference, layer_mode

__all__ = ["ActivationCache", "CachedPhase", "FrostSplit", "NotCacheable", "frost_split"]


class NotCacheable(ValueError):
    """The model or phase cannot use the activation cache; the message says why in one
    sentence."""


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
    the whole model on the data as given."""

    model: keras.Model | None
    x: Any
    validation: Any
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


def _length(x: Any) -> int:
    first = x if isinstance(x, np.ndarray) else (list(x.values())[0] if isinstance(x, dict) else x[0])
    return len(first)


def _rows(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, np.ndarray):
        return x[start:stop]
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return [v[start:stop] for v in x]


class ActivationCache:
    """Computes, stores and cleans up a phase's cached activations for `FineTune`.

    Args:
        runner: The `FineTune` (its model, loss and optimizer are used).
        memory_limit: Bytes under which `"auto"` keeps activations in memory.
        directory: Where disk caches go; None: the runner's checkpoint folder, or a
            temporary one.
    """

    CHUNK = 1024  # samples per predict call when streaming to disk

    def __init__(self, runner, *, memory_limit: int, directory: str | os.PathLike[str] | None):
        self.runner = runner
        self.memory_limit = int(memory_limit)
        self.directory = None if directory is None else os.fspath(directory)

    def _reason_not_to_cache(self, phase, x, y, validation_data, fit_kwargs) -> str | None:
        if phase.epochs == 1:
            return "a phase of one epoch computes each activation once anyway."
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
        if mode is False:
            yield CachedPhase(None, None, None, "off (cache=False)")
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
            yield CachedPhase(None, None, None, f"off, plain fit: {reason}")
            return
        folder = None
        try:
            n = _length(x) + (_length(validation_data[0]) if validation_data is not None else 0)
            dtype = np.dtype(phase.cache_dtype or keras.backend.floatx())
            per_sample = sum(int(np.prod(shape[1:])) for _, shape in split.cut) * dtype.itemsize
            estimate = n * per_sample
            storage = mode if mode != "auto" else ("memory" if estimate <= self.memory_limit else "disk")
            if storage == "disk":
                base = self.directory or (
                    os.path.join(self.runner.checkpoint_dir, "cache") if self.runner.checkpoint_dir else None
                )
                if base is not None:
                    os.makedirs(base, exist_ok=True)
                folder = tempfile.mkdtemp(prefix="frostline-cache-", dir=base)
            features = self._compute(split, x, batch_size, dtype, folder, "train")
            validation = None
            if validation_data is not None:
                val_features = self._compute(split, validation_data[0], batch_size, dtype, folder, "validation")
                validation = (val_features, *validation_data[1:])
            cut = ", ".join(f"{shape[1:]}" for _, shape in split.cut)
            yield CachedPhase(
                split.remainder, features, validation,
                f"{storage}, {estimate:,} bytes of activations at the frost line {cut}", estimate,
            )
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _compute(self, split: FrostSplit, x, batch_size, dtype, folder, label):
        batch = batch_size or 32
        if folder is None:
            out = split.frozen.predict(x, batch_size=batch, verbose=0)
            outs = out if isinstance(out, list) else [out]
            outs = [np.asarray(o, dtype=dtype) for o in outs]
            return outs[0] if len(outs) == 1 else outs
        n = _length(x)
        files = [
            np.lib.format.open_memmap(os.path.join(folder, f"{label}-{i}.npy"), mode="w+", dtype=dtype, shape=(n, *shape[1:]))
            for i, (_, shape) in enumerate(split.cut)
        ]
        for start in range(0, n, self.CHUNK):
            stop = min(n, start + self.CHUNK)
            out = split.frozen.predict(_rows(x, start, stop), batch_size=batch, verbose=0)
            for f, o in zip(files, out if isinstance(out, list) else [out]):
                f[start:stop] = o
        for f in files:
            f.flush()
        return files[0] if len(files) == 1 else files
