"""Other compiled models that share layers with a model: a change to one takes effect on all.

Keras keeps `trainable` on the layer, so freezing a layer that model A shares with model
B freezes it for B too; but B's optimizer and traced train function were built for the
old set. Left alone, B's next `fit` fails on JAX (its optimizer no longer matches) and
trains the frozen layer on TensorFlow. Keras keeps no list of the models a layer is in,
so they are found among the live objects, once per change.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable

import keras

from frostline import _keras
from frostline.errors import SharedLayerError

__all__ = ["compiled_models_sharing", "shared_layer_error"]


def compiled_models_sharing(model: keras.layers.Layer, layers: Iterable[keras.layers.Layer]) -> list[keras.Model]:
    """The live compiled models other than `model` that contain any of `layers`.

    A model compiled with `model`'s own optimizer is left out: it is a view of the same
    training (frostline's cached remainder) and is synced when it is used. Models that
    are unreachable but not yet collected are left out as well.

    Args:
        model: The model that was changed.
        layers: The layers whose flags changed.

    Returns:
        The models, in no particular order.
    """
    wanted = {id(layer) for layer in layers}
    if not wanted:
        return []
    found = _candidates(model, wanted)
    if found:
        gc.collect()  # a model left over from an earlier run may only await collection
    return [m for m in (ref() for ref in found) if m is not None]


def _candidates(model: keras.layers.Layer, wanted: set[int]) -> list[weakref.ref]:
    optimizer = getattr(model, "optimizer", None)
    found = []
    for obj in gc.get_objects():
        # type(), not isinstance: some objects (torch's deprecated aliases) warn when
        # their `__class__` is read.
        if not issubclass(type(obj), keras.Model) or obj is model or not getattr(obj, "compiled", False):
            continue
        other = getattr(obj, "optimizer", None)
        if other is None or other is optimizer:
            continue
        if any(id(layer) in wanted for layer in _keras.all_layers(obj)):
            found.append(weakref.ref(obj))
    return found


def shared_layer_error(other: keras.Model, model: keras.layers.Layer, layers: Iterable[keras.layers.Layer],
                       error: Exception) -> SharedLayerError:
    """The error for `other`, which shares some of `layers` with `model` and could not
    be synced because of `error`."""
    shared = sorted({l.name for l in _keras.all_layers(other)} & {l.name for l in layers})
    return SharedLayerError(
        f"Model {other.name!r} is compiled and shares layers with {model.name!r} "
        f"({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}), but the change cannot take "
        f"effect on it: {error} No model's optimizer was changed. Recompile {other.name!r} or delete it first.",
        models=[other.name],
    )
