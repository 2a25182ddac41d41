"""Exceptions raised by frostline."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlanError(ValueError):
    """A plan, a rule or a selector that cannot be resolved against the model.

    Raised before anything changes: after a `PlanError` every flag of the model is as it
    was. The message says what was expected, what was received and, where one exists,
    what was probably meant.
    """


def did_you_mean(received: str, known: Iterable[str], *, n: int = 1) -> str:
    """Returns `" Did you mean 'x'?"` for the closest known names, or `""`."""
    known = sorted(set(known))
    close = difflib.get_close_matches(received, known, n=n, cutoff=0.6)
    if not close:
        # Then ignoring case: 'Relu' for 'ReLU'.
        lowered = {k.lower(): k for k in known}
        close = [lowered[c] for c in difflib.get_close_matches(received.lower(), list(lowered), n=n, cutoff=0.6)]
    if not close:
        return ""
    if len(close) == 1:
        return f" Did you mean '{close[0]}'?"
    return " Did you mean one of " + ", ".join(f"'{c}'" for c in close) + "?"


class StaleTrainableError(RuntimeError):
    """The model's trainable set changed since its optimizer and train function were
    built, and `fl.FreezeGuard(mode="raise")` was asked not to fix it silently.

    Attributes:
        now_trainable: Paths of variables that train now but that the optimizer was not
            built for.
        now_frozen: Paths of variables the optimizer was built for that are frozen now.
    """

    def __init__(self, message: str, now_trainable: list[str], now_frozen: list[str]):
        super().__init__(message)
        self.now_trainable = now_trainable
        self.now_frozen = now_frozen


class FrozenWeightsChanged(AssertionError):
    """A variable that should not have changed during training did.

    Attributes:
        changes: `{variable path: largest absolute change}` for each changed variable
            (`nan` where the reference values were not kept).
    """

    def __init__(self, message: str, changes: dict[str, float]):
        super().__init__(message)
        self.changes = changes
