"""The process's global random generators, kept across work that draws from them."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = ["keep_global_random_state"]


def keep_global_random_state() -> Callable[[], None]:
    """A function that puts the process's global random generators (Python's, NumPy's
    and, on the torch backend, torch's) back as they are now.

    Computing a phase's cache runs `predict` before the phase's `fit`. On torch every pass
    of a DataLoader takes a seed from torch's global generator, and Keras draws from that
    same generator the masks of a Dropout made without a seed and the order of a shuffled
    fit on arrays. Put back before the `fit`, a cached phase draws the masks and the
    order that plain `fit` draws.
    """
    states: list[Any] = [random.getstate(), np.random.get_state()]
    if keras.backend.backend() == "torch":
        import torch

        states.append(torch.random.get_rng_state())
        states.append(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def restore() -> None:
        random.setstate(states[0])
        np.random.set_state(states[1])
        if len(states) > 2:
            import torch

            torch.random.set_rng_state(states[2])
            if states[3] is not None:
                torch.cuda.set_rng_state_all(states[3])

    return restore
