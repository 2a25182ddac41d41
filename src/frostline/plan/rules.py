"""Rules: the kinds of decision a plan is made of, and their dict form."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from frostline.errors import PlanError, did_you_mean, shorten
from frostline.plan.selectors import Selector, parse_selectors

__all__ = ["RULE_KINDS", "Freeze", "Inference", "LearningRate", "Lora", "Rule", "SelectorsLike", "Unfreeze", "register_rule"]

SelectorsLike = str | Selector | Iterable[str | Selector]

RULE_KINDS: dict[str, type[Rule]] = {}


def register_rule(cls: type[Rule]) -> type[Rule]:
    """Class decorator that makes a rule kind known to `Plan.from_config`."""
    RULE_KINDS[cls.kind] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule of a plan: a decision applied to every layer its selectors match.

    Selecting a container selects everything inside it. A rule sets one or more
    per-layer *settings* (`trainable` for freeze and unfreeze); later rules override
    earlier ones setting the same thing.

    Subclasses set `kind` (the key in dicts and YAML), `fields` (extra keys they
    accept) and implement `settings()`.
    """

    kind: ClassVar[str] = ""
    fields: ClassVar[Mapping[str, type]] = {}

    selectors: tuple[Selector, ...]

    def __post_init__(self) -> None:
        # Rules built directly, not through Plan, get the same checks.
        object.__setattr__(self, "selectors", parse_selectors(self.selectors))
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, expected in self.fields.items():
            value = getattr(self, name)
            if value is None and defaults.get(name) is None:
                continue  # an optional field left out
            if not _is_instance(value, expected):
                raise PlanError(
                    f"{self.kind} rule: field {name!r} expects {expected.__name__}. "
                    f"Received: {shorten(value)} (of type {type(value).__name__})."
                )
            if expected is float:
                object.__setattr__(self, name, _as_float(self.kind, name, value))

    def settings(self) -> dict[str, Any]:
        """The per-layer settings this rule decides, e.g. `{"trainable": False}`."""
        raise NotImplementedError  # pragma: no cover - abstract

    def describe(self) -> str:
        """One line, e.g. `freeze base, head`."""
        return f"{self.kind} " + ", ".join(s.text for s in self.selectors)

    def get_config(self) -> dict[str, Any]:
        """The rule as a dict: `{"freeze": "base"}` or `{"freeze": ["a", "b"]}`."""
        texts = [s.text for s in self.selectors]
        config: dict[str, Any] = {self.kind: texts[0] if len(texts) == 1 else texts}
        for name in self.fields:
            if getattr(self, name) is not None:
                config[name] = getattr(self, name)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, where: str = "rule") -> Rule:
        """Builds a rule from `get_config()` output; see `Plan.from_config`."""
        allowed = (cls.kind, *cls.fields)
        for key in config:
            if key not in allowed:
                raise PlanError(
                    f"{where} ({cls.kind}): unknown field {shorten(key)}. Expected fields: "
                    f"{', '.join(allowed)}. Received: {shorten(dict(config))}."
                    + did_you_mean(str(key)[:200], allowed)
                )
        value = config[cls.kind]
        if not (
            isinstance(value, str)
            or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
        ):
            raise PlanError(
                f"{where} ({cls.kind}): field {cls.kind!r} expects a selector string or a "
                f"non-empty list of them. Received: {shorten(value)} (of type {type(value).__name__})."
            )
        kwargs = {}
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, expected in cls.fields.items():
            if name not in config:
                if defaults.get(name, dataclasses.MISSING) is dataclasses.MISSING:
                    raise PlanError(f"{where} ({cls.kind}): missing field {name!r}.")
                continue
            field_value = config[name]
            if field_value is None and defaults.get(name) is None:
                continue
            if not _is_instance(field_value, expected):
                raise PlanError(
                    f"{where} ({cls.kind}): field {name!r} expects {expected.__name__}. "
                    f"Received: {shorten(field_value)} (of type {type(field_value).__name__})."
                )
            kwargs[name] = field_value
        try:
            selectors = parse_selectors(value)
        except PlanError as e:
            raise PlanError(f"{where} ({cls.kind}): {e}") from None
        return cls(selectors, **kwargs)


def _as_float(kind: str, name: str, value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        raise PlanError(
            f"{kind} rule: field {name!r} expects a number that fits a float (at most about 1.8e308). "
            f"Received: {shorten(value)}."
        ) from None


def _is_instance(value: Any, expected: type) -> bool:
    # YAML's `true` is not a number, and `2` is a fine float.
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


@register_rule
@dataclasses.dataclass(frozen=True)
class Freeze(Rule):
    """Freeze the selected layers: their weights are not updated by training."""

    kind: ClassVar[str] = "freeze"

    def settings(self) -> dict[str, Any]:
        return {"trainable": False}


@register_rule
@dataclasses.dataclass(frozen=True)
class Unfreeze(Rule):
    """Unfreeze the selected layers: their weights are updated by training."""

    kind: ClassVar[str] = "unfreeze"

    def settings(self) -> dict[str, Any]:
        return {"trainable": True}


@register_rule
@dataclasses.dataclass(frozen=True)
class Inference(Rule):
    """Run the selected layers in inference mode during `fit`, even while they train.

    BatchNormalization then normalizes with, and keeps, its moving statistics; Dropout
    is off. This is what building with `base(x, training=False)` gives, without
    rebuilding the model. `enabled=False` undoes it.
    """

    kind: ClassVar[str] = "inference"
    fields: ClassVar[Mapping[str, type]] = {"enabled": bool}

    enabled: bool = True

    def settings(self) -> dict[str, Any]:
        return {"inference": self.enabled}

    def describe(self) -> str:
        return super().describe() + ("" if self.enabled else " (enabled=False)")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.enabled:
            del config["enabled"]
        return config


@register_rule
@dataclasses.dataclass(frozen=True)
class LearningRate(Rule):
    """Multiply the learning rate of the selected layers' weights (discriminative rates).

    Each selected variable's update uses the optimizer's learning rate times
    `multiplier`, for every built-in Keras optimizer (Adam included) on every backend.
    """

    kind: ClassVar[str] = "lr"
    fields: ClassVar[Mapping[str, type]] = {"multiplier": float}

    multiplier: float

    def settings(self) -> dict[str, Any]:
        return {"lr": self.multiplier}

    def describe(self) -> str:
        return super().describe() + f" x{self.multiplier:g}"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.multiplier >= 0 and math.isfinite(self.multiplier)):
            raise PlanError(
                f"lr rule: field 'multiplier' expects a finite number of 0 or more. "
                f"Received: {shorten(self.multiplier)}."
            )




@register_rule
@dataclasses.dataclass(frozen=True)
class Lora(Rule):
    """Give the selected layers LoRA adapters, with Keras's own `enable_lora`.

    Every selected layer that supports it (`Dense`, `EinsumDense`, `Embedding`,
    convolutions) gets adapters of `rank`, scaled by `alpha / rank`; in a selected
    container, every layer inside that supports it does. The adapters train; the adapted
    layer's kernel stays frozen whatever later rules say about the layer or its
    containers. A selected layer that cannot take adapters is a `PlanError` naming it.
    """

    kind: ClassVar[str] = "lora"
    fields: ClassVar[Mapping[str, type]] = {"rank": int, "alpha": float}

    rank: int = 0
    alpha: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise PlanError(
                f"lora rule: field 'rank' expects a positive integer, e.g. rank=8. Received: {shorten(self.rank)}."
            )
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise PlanError(f"lora rule: field 'alpha' expects a positive number. Received: {shorten(self.alpha)}.")

    def settings(self) -> dict[str, Any]:
        return {"lora": (self.rank, self.alpha)}

    def describe(self) -> str:
        alpha = "" if self.alpha is None else f", alpha {self.alpha:g}"
        return super().describe() + f" (rank {self.rank}{alpha})"
