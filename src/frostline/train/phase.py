"""`Phase`: one phase of fine-tuning, as data; `PhaseInfo`: what the runner tells its
override points about a phase as it runs."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import keras

from frostline.cache.policy import FitInputs
from frostline.errors import FrostlineTypeError, FrostlineValueError
from frostline.inspect.report import Report
from frostline.plan.plan import Plan

__all__ = ["Phase", "PhaseInfo", "phase_line"]

_CACHE_MODES = ("auto", "memory", "disk", True, False)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of fine-tuning.

    Args:
        name: A name for logs, history and plots.
        epochs: The phase's epochs (its most, with `early_stopping`).
        plan: Applied on top of the previous phases' plans when the phase begins.
            Defaults to an empty plan (the frozen set stays as it is).
        learning_rate: A float or a Keras `LearningRateSchedule` (counted from the
            phase's first step). Defaults to None: the optimizer's rate as it is.
        callbacks: Keras callbacks for this phase only. Defaults to none.
        early_stopping: Ends the phase early: the arguments of
            `keras.callbacks.EarlyStopping` (`monitor`, `patience`, `min_delta`,
            `mode`, `restore_best_weights`). Defaults to None: all `epochs` run.
        cache: Compute the frozen front of the model once and train the rest on its
            outputs: `"auto"` (default) where that gives the same result, else plain
            `fit` with the reason on the phase line; `"memory"` or `"disk"` (files
            streamed a batch at a time) insist, and are an error where the cache
            cannot apply; `False` never.
        cache_dtype: Store cached floating activations in this dtype, e.g.
            `"float16"` (integer and boolean ones keep their own). Defaults to None:
            as computed.
        cache_views: With random augmentation in front of the frozen part (layers
            such as `RandomFlip`, or a dataset whose map function augments), compute
            this many augmented views of every sample through the frozen part once
            (random layers in training mode, the frozen part in inference mode), and
            train epoch `e` of the phase on view `e % cache_views`. Defaults to None:
            random layers in front of the frozen part keep the phase uncached.

    Raises:
        FrostlineValueError: for an empty name, epochs that are not a positive integer,
            a learning rate that is not a positive number or a schedule, an unknown
            cache mode, or `cache_views` that is not a positive integer (or given with
            `cache=False`).
        FrostlineTypeError: for a plan that is not a `Plan`, or an argument of
            `early_stopping` that `keras.callbacks.EarlyStopping` does not take.

    Example:

    >>> Phase("head", epochs=5, plan=Plan().freeze("base"), learning_rate=1e-3)
    Phase('head', epochs=5, plan=Plan(freeze base), learning_rate=0.001)
    """

    name: str
    _: dataclasses.KW_ONLY
    epochs: int
    plan: Plan = dataclasses.field(default_factory=Plan)
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | None = None
    callbacks: tuple = ()
    early_stopping: Mapping[str, Any] | None = None
    cache: Literal["auto", "memory", "disk"] | bool = "auto"
    cache_dtype: str | None = None
    cache_views: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise FrostlineValueError(f"Expected a phase name (a non-empty string). Received: name={self.name!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise FrostlineValueError(
                f"Phase {self.name!r}: expected epochs to be a positive integer. Received: epochs={self.epochs!r}"
            )
        if not isinstance(self.plan, Plan):
            raise FrostlineTypeError(f"Phase {self.name!r}: expected plan to be a frostline Plan. Received: {self.plan!r}")
        object.__setattr__(self, "learning_rate", self._checked_learning_rate())
        object.__setattr__(self, "callbacks", tuple(self.callbacks))
        if self.cache not in _CACHE_MODES:
            raise FrostlineValueError(
                f"Phase {self.name!r}: expected cache='auto' (or True), 'memory', 'disk' or False. "
                f"Received: cache={self.cache!r}"
            )
        if self.cache is True:
            object.__setattr__(self, "cache", "auto")
        views = self.cache_views
        if views is not None and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
            raise FrostlineValueError(
                f"Phase {self.name!r}: expected cache_views to be a positive integer (the number of augmented "
                f"views to cache) or None. Received: cache_views={views!r}")
        if views is not None and self.cache is False:
            raise FrostlineValueError(
                f"Phase {self.name!r}: cache_views={views} asks for cached views, but cache=False turns the cache "
                "off. Drop one of them.")
        if self.early_stopping is not None:
            try:
                keras.callbacks.EarlyStopping(**self.early_stopping)  # fails early on bad arguments
            except TypeError as e:
                raise FrostlineTypeError(str(e)) from None
            object.__setattr__(self, "early_stopping", dict(self.early_stopping))

    def _checked_learning_rate(self) -> float | keras.optimizers.schedules.LearningRateSchedule | None:
        lr = self.learning_rate
        if lr is None or isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            return lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
            raise FrostlineValueError(
                f"Phase {self.name!r}: expected learning_rate to be a positive number or a "
                f"keras.optimizers.schedules.LearningRateSchedule. Received: {lr!r}"
            )
        return float(lr)

    def __repr__(self) -> str:
        parts = [repr(self.name), f"epochs={self.epochs}", f"plan={self.plan}"]
        if self.learning_rate is not None:
            parts.append(f"learning_rate={self.learning_rate!r}")
        if self.early_stopping:
            parts.append(f"early_stopping={self.early_stopping!r}")
        if self.callbacks:
            parts.append(f"callbacks={list(self.callbacks)!r}")
        return f"Phase({', '.join(parts)})"

    def get_config(self) -> dict[str, Any]:
        """The phase as plain data, without its callbacks (they are code, not data:
        pass them to `from_config` again). A schedule is serialised with
        `keras.saving.serialize_keras_object`.

        Example:

        >>> Phase("head", epochs=2, plan=Plan().freeze("base")).get_config()
        {'name': 'head', 'epochs': 2, 'plan': {'rules': [{'freeze': 'base'}]}, 'learning_rate': None, \
'early_stopping': None, 'cache': 'auto', 'cache_dtype': None, 'cache_views': None}
        """
        lr = self.learning_rate
        if lr is not None and not isinstance(lr, float):
            lr = keras.saving.serialize_keras_object(lr)
        return {
            "name": self.name, "epochs": self.epochs, "plan": self.plan.get_config(), "learning_rate": lr,
            "early_stopping": None if self.early_stopping is None else dict(self.early_stopping),
            "cache": self.cache, "cache_dtype": self.cache_dtype, "cache_views": self.cache_views,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *,
                    callbacks: Sequence[keras.callbacks.Callback] = ()) -> Phase:
        """The phase `get_config()` described.

        Args:
            config: `get_config()` output; keys other than `name` and `epochs` may be
                left out and take their defaults.
            callbacks: The phase's callbacks, which the config does not hold. Defaults
                to none.

        Raises:
            FrostlineValueError: for an unknown key, and what `Phase` itself refuses.
            PlanError: for a plan that does not parse.

        Example:

        >>> phase = Phase("top", epochs=3, plan=Plan().unfreeze("base/block5_*"), learning_rate=1e-5)
        >>> Phase.from_config(phase.get_config()) == phase
        True
        """
        known = {f.name for f in dataclasses.fields(cls)} - {"callbacks"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise FrostlineValueError(
                f"Phase config: unknown key {unknown[0]!r}. Expected some of: {', '.join(sorted(known))} "
                "(callbacks are passed as from_config(..., callbacks=...))."
            )
        values = dict(config)
        values["plan"] = Plan.from_config(values.get("plan") or {"rules": []})
        if isinstance(values.get("learning_rate"), Mapping):
            values["learning_rate"] = keras.saving.deserialize_keras_object(values["learning_rate"])
        return cls(**values, callbacks=tuple(callbacks))


_dataclass_init = Phase.__init__


@functools.wraps(_dataclass_init)
def _phase_init(self, name: str, *more: Any, **kwargs: Any) -> None:
    # The name alone is positional: `Phase("top", 5, plan, 1e-5)` is easy to misread.
    if more:
        raise FrostlineTypeError(
            f"Phase takes its name positionally and everything else by keyword, e.g. "
            f"Phase({name!r}, epochs=5, plan=fl.Plan().freeze('base'), learning_rate=1e-3). "
            f"Received {len(more)} more positional argument(s): {', '.join(repr(m) for m in more)}."
        )
    _dataclass_init(self, name, **kwargs)


Phase.__init__ = _phase_init


@dataclasses.dataclass(frozen=True)
class PhaseInfo:
    """What `FineTune` tells its override points about a phase.

    Attributes:
        index: The phase's number, from 0.
        count: How many phases the run has.
        report: The `Report` of the model with the phase's plan applied.
        start_epoch: The epoch the phase began with (for a resumed phase, before the
            interruption).
        cache_description: What the phase trains on, as the cache line says it, e.g.
            "memory, 10,240 bytes of activations at the frost line (32,)" or "off,
            plain fit: <the reason>".
        cache_bytes: The cached activations' size in bytes (0 without a cache).
        cached: Whether the phase fits the remainder model on cached activations.
        phase_lines: Whether `fit` was asked to print phase lines.
        epochs_run: In `on_phase_end`, the phase's epochs run (also those before an
            interruption); in `on_phase_begin`, the epochs run before an interruption
            for a resumed phase, else None.
        logs: In `on_phase_end`, the last epoch's logs, or None.
        stopped_early: In `on_phase_end`, whether the phase's `early_stopping` ended it.
    """

    index: int
    count: int
    report: Report
    start_epoch: int
    cache_description: str
    cache_bytes: int = 0
    cached: bool = False
    phase_lines: bool = False
    epochs_run: int | None = None
    logs: dict[str, float] | None = None
    stopped_early: bool = False


def phase_line(phase: Phase, info: PhaseInfo, *, devices: str = "") -> str:
    """The line that says what a phase trains: its number and name, the totals, what is
    frozen, the learning rate and its epochs: "up to 15 epochs", or for a phase resumed
    part way (`info.epochs_run` epochs of it run before the interruption) "up to 12 more
    epochs (3 of 15 run before the interruption)".

    Args:
        phase: The phase.
        info: Its `PhaseInfo`.
        devices: Appended after a " · ", e.g. "data parallel over 4 devices". Defaults
            to "": nothing.
    """
    rows = [r for r in info.report.rows if r.depth == 1]
    frozen = [r.path for r in rows if r.state == "frozen"]
    partial = [r.path for r in rows if r.state == "partial"]
    lr = phase.learning_rate
    lr_text = "as before" if lr is None else (f"{lr:g}" if isinstance(lr, float) else type(lr).__name__)
    described = ", ".join(frozen) if frozen else "nothing"
    if partial:
        described += f"; partly frozen: {', '.join(partial)}"
    done = min(info.epochs_run or 0, phase.epochs)
    left = phase.epochs - done
    epochs = f"up to {left} " + ("more " if done else "") + ("epoch" if left == 1 else "epochs")
    if done:
        epochs += f" ({done} of {phase.epochs} run before the interruption)"
    return (
        f"phase {info.index + 1}/{info.count} '{phase.name}': {info.report.totals_line} · "
        f"frozen: {described} · learning rate {lr_text} · {epochs}"
        + (f" · {devices}" if devices else "")
    )


@dataclasses.dataclass(frozen=True)
class FitCall:
    """The arguments of one `FineTune.fit` that every phase uses."""

    inputs: FitInputs
    user: keras.callbacks.CallbackList
    verbose: str | int
    phase_lines: bool
