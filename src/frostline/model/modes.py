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
from collections.abc import Iterable

import keras

from frostline import _keras, _state

__all__ = ["draws_random_numbers", "has_training_argument", "is_forced_inference", "layer_mode", "set_inference"]


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


# How much randomness a layer draws: a layer whose amounts are all zero computes the same
# in training (Keras's Dropout: `if training and self.rate > 0`; its RNN cells the same
# for `dropout` and `recurrent_dropout`).
_RANDOM_AMOUNTS = ("rate", "dropout", "recurrent_dropout", "stddev")
# Classes that pass `training` on to their sublayers and use it for nothing else:
# Keras's own containers (Functional, Sequential, wrappers, MultiHeadAttention, RNN)
# and keras-hub's (backbones, tasks, transformer blocks).
_PASS_TRAINING_ON = ("keras.", "keras_hub.")


def draws_random_numbers(layer: keras.layers.Layer) -> bool:
    """Whether the layer itself draws random numbers outside inference mode: random
    augmentation (`Random*`), or a layer with a seed generator (Dropout, noise, a
    recurrent cell) whose rate, dropout or stddev is not all zero. Its sublayers are
    not looked at."""
    if type(layer).__name__.startswith("Random"):
        return True  # augmentation: RandomFlip, RandomRotation, ...
    if not _keras.has_seed_generators(layer):
        return False
    amounts = [getattr(layer, name, None) for name in _RANDOM_AMOUNTS]
    amounts = [a for a in amounts if isinstance(a, (int, float))]
    return not amounts or any(a > 0 for a in amounts)


def layer_mode(layer: keras.layers.Layer, *, inside: Iterable[keras.layers.Layer] = ()) -> str:
    """How the layer runs inside `fit`: `"inference"`, `"training"`, or `"-"` for a
    layer whose output does not depend on it.

    One rule, used by the report, the audit and the cache: a layer runs in `"training"`
    mode when its output inside `fit` may depend on `training` or on a random
    generator: a trainable BatchNormalization (it also updates its statistics), a
    layer that draws random numbers (Dropout with a rate above 0, noise, random
    augmentation, a recurrent cell with `dropout` or `recurrent_dropout`), a layer of
    the user's own whose `call` takes `training`, and a container (Keras's or
    keras-hub's, such as a Functional model, `TimeDistributed`, `MultiHeadAttention`
    or a keras-hub backbone) with such a layer inside. `"inference"` is a layer that
    frostline forces into inference mode, or a frozen BatchNormalization. Anything
    else — Dense, Conv2D, a container of only such layers, a Dropout of rate 0 — is
    `"-"`: it computes the same either way.

    A layer called through a container that frostline forces into inference mode runs
    in inference mode too (the container passes `training=False` down), whatever its
    own flags say.

    Args:
        layer: A Keras layer.
        inside: The containers the layer is called through, if known. Defaults to none.

    Returns:
        `"inference"`, `"training"` or `"-"`.
    """
    if is_forced_inference(layer):
        return "inference"
    if any(is_forced_inference(c) for c in inside):
        own = layer_mode(layer)
        return "inference" if own == "training" else own
    if isinstance(layer, keras.layers.BatchNormalization):
        return "training" if layer.trainable else "inference"  # Keras does the latter
    if draws_random_numbers(layer):
        return "training"
    if has_training_argument(layer) and not type(layer).__module__.startswith(_PASS_TRAINING_ON):
        return "training"  # a layer of the user's own that takes `training` may use it
    # Keras passes `training` down to sublayers through its call context, also through
    # a container whose own `call` does not take it. (A keras-hub task's preprocessor
    # runs before the model, outside its call.)
    inside = [c for c in _keras.direct_sublayers(layer) if c is not getattr(layer, "preprocessor", None)]
    return "training" if any(layer_mode(c) == "training" for c in inside) else "-"
