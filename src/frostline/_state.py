"""Everything frostline remembers about a model, in one registry.

Keras objects have no place for a library's notes, and attributes set on them are tracked
(and saved) by Keras and torch. frostline keeps its notes here instead, keyed weakly by
the model, layer or optimizer they are about, so that they go when the object goes:

- a model: the plans applied to it, its learning-rate multipliers, the key of its last
  sync;
- a layer: whether frostline runs it in inference mode;
- an optimizer: the multipliers installed on it, and the rate variable a phase schedule
  stands in for.

No record refers back to the object it is filed under, or the weak key would never die.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

__all__ = ["LayerState", "ModelState", "OptimizerState", "layer_state", "model_state", "optimizer_state", "peek", "replace"]


@dataclasses.dataclass
class ModelState:
    """What frostline remembers about a model.

    Attributes:
        plan: Every plan applied with `fl.apply`, in order, as one Plan (None: none yet).
        lr_multipliers: `{id(variable): (variable, multiplier)}` for multipliers other
            than 1; `sync` installs them on the model's optimizer.
        sync_key: The trainable set, multipliers, inference layers and compiled functions
            at the last sync; a sync with the same key has nothing to do.
    """

    plan: Any = None
    lr_multipliers: dict[int, tuple[Any, float]] = dataclasses.field(default_factory=dict)
    sync_key: tuple | None = None


@dataclasses.dataclass
class LayerState:
    """What frostline remembers about a layer.

    Attributes:
        inference: Whether frostline runs the layer with `training=False`.
        instance_call: Whether the layer had a `call` of its own instance (not its
            class's) before frostline wrapped it; undoing puts that one back.
    """

    inference: bool = False
    instance_call: bool = False


@dataclasses.dataclass
class OptimizerState:
    """What frostline remembers about an optimizer.

    Attributes:
        lr_multipliers: `{variable key: multiplier}` installed on this optimizer.
        rate_variable: The optimizer's learning-rate variable, kept while a phase
            schedule stands in for it.
    """

    lr_multipliers: dict[Any, float] = dataclasses.field(default_factory=dict)
    rate_variable: Any = None

    def copy(self) -> OptimizerState:
        return OptimizerState(dict(self.lr_multipliers), self.rate_variable)


# One entry per object: its records by kind (a nested model is a model and a layer).
_REGISTRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _record(obj: Any, kind: type) -> Any:
    records = _REGISTRY.get(obj)
    if records is None:
        records = _REGISTRY[obj] = {}
    if kind not in records:
        records[kind] = kind()
    return records[kind]


def model_state(model: Any) -> ModelState:
    """The model's record, made empty on first use."""
    return _record(model, ModelState)


def layer_state(layer: Any) -> LayerState:
    """The layer's record, made empty on first use."""
    return _record(layer, LayerState)


def optimizer_state(optimizer: Any) -> OptimizerState:
    """The optimizer's record, made empty on first use."""
    return _record(optimizer, OptimizerState)


def peek(obj: Any, kind: type) -> Any:
    """The object's record of that kind, or None, without making one."""
    return _REGISTRY.get(obj, {}).get(kind)


def replace(obj: Any, kind: type, record: Any) -> None:
    """Sets the object's record of that kind (None drops it); for putting back a snapshot."""
    records = _REGISTRY.get(obj)
    if record is None:
        if records is not None:
            records.pop(kind, None)
        return
    if records is None:
        records = _REGISTRY[obj] = {}
    records[kind] = record
