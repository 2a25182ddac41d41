"""Every exception frostline raises to users, and the "Did you mean" helper.

Each is a `FrostlineError` and also the built-in type a Keras user would catch for it
(`PlanError` is a `ValueError`, `FrozenWeightsChanged` an `AssertionError`, ...), so
`except ValueError` keeps working and `except fl.FrostlineError` catches them all.
"""

from __future__ import annotations

import difflib
import itertools
import reprlib
from collections.abc import Iterable
from typing import Any


class FrostlineError(Exception):
    """The base of every frostline exception."""


class FrostlineValueError(FrostlineError, ValueError):
    """An argument with the right type but a value frostline cannot use. The message says
    what was expected and what was received."""


class FrostlineTypeError(FrostlineError, TypeError):
    """An argument of the wrong type, or an object frostline cannot work with (an
    optimizer it cannot rebuild, say). The message says what was expected."""


class PlanError(FrostlineValueError):
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


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() itself refuses integers of more than 4,300 digits.
        digits = int(x.bit_length() * 0.30103) + 1
        return super().repr_int(x, level) if digits < 40 else f"<an integer of about {digits:,} digits>"

    def repr_dict(self, x: dict, level: int) -> str:
        # In insertion order (reprlib sorts the keys), as the user wrote them.
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(x[k], level - 1)}" for k in itertools.islice(x, self.maxdict)]
        return "{" + ", ".join(pieces + ["..."] * (len(x) > self.maxdict)) + "}"


_SHORT = _ShortRepr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 3


def shorten(value: Any, limit: int = 80, *, quote: bool = True) -> str:
    """`repr(value)` cut to at most `limit` characters, for error messages.

    Nested and long values are elided the way `reprlib` does (`[1, 2, ...]`), so a
    message never holds a huge structure or string. With `quote=False` a string is cut
    as it is, without quotes (for another error's message).

    Example:

    >>> shorten(list(range(100)))
    '[0, 1, 2, 3, 4, 5, ...]'
    >>> shorten(10**400)
    '<an integer of about 401 digits>'
    >>> shorten("no such file: " + "x" * 100, 30, quote=False)
    'no such file: xxxxxxxxxxxxx...'
    """
    text = value if isinstance(value, str) and not quote else _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StaleTrainableError(FrostlineError, RuntimeError):
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


class FrozenWeightsChanged(FrostlineError, AssertionError):
    """A variable that should not have changed during training did.

    Attributes:
        changes: `{variable path: largest absolute change}` for each changed variable
            (`nan` where the reference values were not kept).
    """

    def __init__(self, message: str, changes: dict[str, float]):
        super().__init__(message)
        self.changes = changes


class MissingFileError(FrostlineError, FileNotFoundError):
    """A file or folder frostline was asked to read does not exist."""


class StorageError(FrostlineError, OSError):
    """A run could not write its cache or checkpoint (a full disk, a read-only folder);
    `errno` is the operating system's. The phase was undone (see `FineTune.fit`)."""


class BackendUnavailable(FrostlineError, ImportError):
    """`KERAS_BACKEND` names a backend that is unknown (the message suggests the closest)
    or whose package is not installed."""


class NotCacheable(FrostlineValueError):
    """The model or phase cannot use the activation cache; the message says why in one
    sentence."""


class CheckpointError(FrostlineValueError):
    """A checkpoint that cannot be resumed: missing, unreadable, or written by a run with
    a different configuration (the message lists the fields that differ)."""


class ConfigError(FrostlineValueError):
    """A `frostline train` configuration that cannot run. The message starts with the
    YAML path of the culprit, e.g. `phases[1].epochs: ...`."""


class DistributionError(FrostlineValueError):
    """A distribution this backend or machine cannot run, or inputs its devices cannot
    share equally."""


class NoStoredPlan(FrostlineError, LookupError):
    """A `.keras` file that holds no frostline plan (it was saved without `fl.apply`)."""


class SharedLayerError(FrostlineError, RuntimeError):
    """Another compiled model shares layers with the one being changed, and the change
    cannot take effect on it too (its optimizer cannot be rebuilt); nothing was changed.

    Attributes:
        models: The names of the models concerned.
    """

    def __init__(self, message: str, models: list[str]):
        super().__init__(message)
        self.models = models


class TrainableSetMismatch(FrostlineError, RuntimeError):
    """Keras did not train exactly the resolved variables after frostline set the flags;
    the flags were restored. A bug to report: the message names the variables."""
