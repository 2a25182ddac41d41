"""FreezeGuard: a Keras callback that never lets a stale trainable set train silently."""

from __future__ import annotations

from typing import Literal

import keras

from frostline import _keras
from frostline.apply.sync import sync, untangle_optimizer_buffers
from frostline.errors import FrostlineValueError, StaleTrainableError
from frostline.model.tree import LayerTree

__all__ = ["FreezeGuard", "stale_variables"]


def stale_variables(model: keras.Model) -> tuple[list[str], list[str]]:
    """Variables whose trainability differs from what the optimizer was built for.

    Returns:
        `(now_trainable, now_frozen)`: paths of variables that train now but the
        optimizer was not built for, and of variables it was built for that are frozen
        now. Both empty for an optimizer that is not built yet.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "built", False):
        return [], []
    built_for_list = _keras.built_for(optimizer)
    built_for = {id(v) for v in built_for_list}
    trainable = {id(v) for v in model.trainable_variables}
    paths = {id(v): n.variable_path(v) for n in LayerTree(model) for v in n.weights}
    now_trainable = [paths.get(id(v), v.path) for v in model.trainable_variables if id(v) not in built_for]
    now_frozen = [paths.get(id(v), v.path) for v in built_for_list if id(v) not in trainable]
    return now_trainable, now_frozen


class FreezeGuard(keras.callbacks.Callback):
    """Checks at the start of training that hand-set `trainable` flags took effect.

    Keras builds the optimizer and the train function for the variables that were
    trainable then; a `layer.trainable = ...` afterwards is ignored, half-applied or a
    crash depending on the backend. FreezeGuard compares the trainable set with what the
    optimizer was built for and either makes the change take effect with `fl.sync`
    (optimizer state kept) or raises `StaleTrainableError`.

    Args:
        mode: `"sync"` (default) makes the change take effect; `"raise"` raises
            `StaleTrainableError` naming what changed.

    Example:

    >>> import keras, numpy as np, frostline as fl
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="a"),
    ...                           keras.layers.Dense(1, name="b")])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> x, y = np.ones((4, 2)), np.ones((4, 1))
    >>> _ = model.fit(x, y, verbose=0)
    >>> model.get_layer("a").trainable = False
    >>> _ = model.fit(x, y, verbose=0, callbacks=[fl.FreezeGuard()])
    >>> len(model.optimizer.variables)
    6
    """

    def __init__(self, mode: Literal["sync", "raise"] = "sync"):
        super().__init__()
        if mode not in ("sync", "raise"):
            raise FrostlineValueError(f"Expected mode='sync' or mode='raise'. Received: mode={mode!r}")
        self.mode = mode

    def on_train_begin(self, logs=None):
        now_trainable, now_frozen = stale_variables(self.model)
        if not now_trainable and not now_frozen:
            untangle_optimizer_buffers(self.model)
            return
        if self.mode == "raise":
            raise StaleTrainableError(
                "The trainable set changed since the optimizer was built, so this fit "
                "would not train what the flags say. Now trainable: "
                f"{now_trainable or 'none'}; now frozen: {now_frozen or 'none'}. "
                "Call fl.sync(model) after setting layer.trainable (state is kept), "
                "use fl.apply(model, plan), or FreezeGuard(mode='sync').",
                now_trainable,
                now_frozen,
            )
        sync(self.model)
