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
        return ""
    if len(close) == 1:
        return f" Did you mean '{close[0]}'?"
    return " Did you mean one of " + ", ".join(f"'{c}'" for c in close) + "?"
