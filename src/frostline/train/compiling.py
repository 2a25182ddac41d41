"""The compile arguments a phase's model gets, the whole model's or its cached remainder's."""

from __future__ import annotations

from typing import Any

import keras

from frostline.apply.multipliers import model_lr_multipliers, set_model_lr_multipliers
from frostline.apply.sync import sync_model

__all__ = ["compile_arguments", "compile_config", "compile_for_run", "compile_remainder", "with_carried_metrics"]


def compile_config(model: keras.Model, keys: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """The model's compile arguments but the optimizer (only `keys`, when given), as objects; None when Keras
    cannot serialize them (a loss or metric of the user's own) or it is not compiled."""
    try:
        config = {k: v for k, v in (model.get_compile_config() or {}).items()
                  if k != "optimizer" and (keys is None or k in keys)}
        return keras.saving.deserialize_keras_object(config) if config else None
    except Exception:  # noqa: BLE001 - not serializable: the caller's own arguments
        return None


def with_carried_metrics(model: keras.Model, arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` for `model.compile`, with the metrics the model was compiled with when
    `arguments` gives none: Keras keeps a model's metrics when it is compiled again with
    metrics=None (a keras-hub task compiles itself with its own), and says so here, so
    that a cached remainder gets them too."""
    if arguments.get("metrics") is not None or not model.compiled:
        return arguments
    carried = compile_config(model, ("metrics", "weighted_metrics")) or {}
    out = dict(arguments, metrics=carried.get("metrics"))
    if carried.get("weighted_metrics") is not None:
        out.setdefault("weighted_metrics", carried["weighted_metrics"])
    return out


def compile_arguments(model: keras.Model, fallback: dict[str, Any]) -> dict[str, Any]:
    """The whole model's compile arguments but the optimizer, as it was compiled (a
    keras-hub task's defaults included), for the cached remainder, so that a cached
    phase computes and logs what plain `fit` does; `fallback` where Keras cannot
    serialize them."""
    return compile_config(model) or fallback


def compile_remainder(remainder: keras.Model, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                      fallback: dict[str, Any]) -> keras.Model:
    """Compiles a cached phase's remainder with the whole model's optimizer, loss and
    metrics, the optimizer put in the remainder's variable order with its state and
    learning-rate multipliers kept."""
    remainder.compile(optimizer=optimizer, **compile_arguments(model, fallback))
    set_model_lr_multipliers(remainder, model_lr_multipliers(model))
    sync_model(remainder)
    return remainder


def compile_for_run(model: keras.Model, optimizer: keras.optimizers.Optimizer, arguments: dict[str, Any]) -> None:
    """Compiles the model with a run's optimizer and `arguments` (the metrics it was
    compiled with carried over), unless it already is."""
    if getattr(model, "optimizer", None) is optimizer and model.compiled:
        return
    model.compile(optimizer=optimizer, **with_carried_metrics(model, arguments))
