"""Inference mode as a rule: selected layers run with `training=False` inside `fit`.

The Keras fine-tuning guide builds the model with `base(x, training=False)` so that
BatchNormalization keeps using (and not updating) its moving statistics while its gamma
and beta train. A model that already exists, such as `Sequential([base, head])`, cannot
get that call added. frostline instead wraps the layer's `call` so that it always receives
`training=False`; its weights still train if they are trainable.
"""

from __future__ import annotations

import functools
import inspect

import keras

from frostline import _keras, _state

__all__ = ["has_training_argument", "is_forced_inference", "layer_mode", "set_inference"]


def has_training_argument(layer: keras.layers.Layer) -> bool:
    """Whether the layer's `call` takes a `training` argument (BatchNormalization,
    Dropout, models, ...)."""
    return _keras.call_takes_training(layer)


def is_forced_inference(layer: keras.layers.Layer) -> bool:
    """Whether frostline makes this layer run in inference mode."""
    record = _state.peek(layer, _state.LayerState)
    return bool(record and record.inference)


def set_inference(layer: keras.layers.Layer, enabled: bool) -> None:
    """Makes `layer` always run with `training=False` (or undoes it).

    Layers without a `training` argument are left alone: they behave the same either way.
    """
    if enabled == is_forced_inference(layer) or not has_training_argument(layer):
        return
    record = _state.layer_state(layer)
    if not enabled:
        wrapper = layer.__dict__.pop("call")
        if record.instance_call:
            layer.__dict__["call"] = wrapper.__wrapped__
        record.inference = record.instance_call = False
        return
    original = layer.call
    signature = inspect.signature(original)

    @functools.wraps(original)  # keeps the original as `call.__wrapped__`
    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["training"] = False
        return original(*bound.args, **bound.kwargs)

    record.instance_call = "call" in layer.__dict__
    record.inference = True
    # Set in the instance dict directly: Keras's and torch's `__setattr__` must not see
    # the wrapper as a tracked attribute.
    layer.__dict__["call"] = call


_TRAINING_SENSITIVE = (
    keras.layers.BatchNormalization,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
)


def _behaves_differently_in_training(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, _TRAINING_SENSITIVE) or type(layer).__name__.startswith("Random"):
        return True
    # Keras's own models and other layers take `training` only to pass it on; a layer
    # of the user's own that takes it may use it.
    return not type(layer).__module__.startswith("keras.")


def layer_mode(layer: keras.layers.Layer) -> str:
    """How the layer runs inside `fit`: `"inference"`, `"training"`, or `"-"` for a
    layer whose behaviour does not depend on it (Dense, Conv2D, Keras's containers).

    A frozen BatchNormalization runs in inference mode on its own: Keras does that.
    """
    if not has_training_argument(layer):
        return "-"
    if is_forced_inference(layer):
        return "inference"
    if isinstance(layer, keras.layers.BatchNormalization) and not layer.trainable:
        return "inference"
    return "training" if _behaves_differently_in_training(layer) else "-"
