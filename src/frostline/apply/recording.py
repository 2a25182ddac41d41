"""The plans applied to a model, remembered so that `model.save` stores them."""

from __future__ import annotations

import weakref

import keras

from frostline import _state
from frostline.inspect.saving import write_assets
from frostline.plan.plan import Plan

__all__ = ["record_plan"]


def record_plan(model: keras.layers.Layer, plan: Plan) -> None:
    """Remembers `plan` as applied to `model`, and gives the model a `save_assets` hook
    that writes its state and plans into the `.keras` file."""
    record = _state.model_state(model)
    record.plan = (record.plan or Plan()).then(plan)
    if "save_assets" in model.__dict__:  # the hook is installed already
        return
    inherited = getattr(model, "save_assets", None)
    model_ref = weakref.ref(model)

    def save_assets(dir_path: str) -> None:
        if inherited is not None:
            inherited(dir_path)
        target = model_ref()
        if target is not None:
            write_assets(target, dir_path)

    # The instance dict, not setattr: Keras and torch must not track the hook.
    model.__dict__["save_assets"] = save_assets
