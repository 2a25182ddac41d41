"""load_model: a `.keras` file loaded with the frozen set and modes it was saved with."""

from __future__ import annotations

import os
import warnings

import keras

from frostline.apply.apply import apply
from frostline.errors import NoStoredPlan
from frostline.inspect.saving import load_plan

__all__ = ["load_model"]


def load_model(path: str | os.PathLike[str], **kwargs) -> keras.Model:
    """`keras.saving.load_model`, then the stored plan re-applied (inference modes too).

    Args:
        path: A `.keras` file.
        **kwargs: Passed to `keras.saving.load_model`.

    Returns:
        The model, with the frozen set and modes it was saved with.
    """
    model = keras.saving.load_model(path, **kwargs)
    try:
        plan = load_plan(path)
    except NoStoredPlan:
        return model
    with warnings.catch_warnings():
        # Selectors that matched nothing when the plan was applied match nothing now.
        warnings.simplefilter("ignore", UserWarning)
        apply(model, plan, strict=False)
    return model
