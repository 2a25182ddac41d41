"""Plan, rules and Resolution: what should be frozen, decided before anything changes."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import yaml

from frostline.errors import PlanError, did_you_mean
from frostline.model.modes import is_forced_inference
from frostline.apply.optimizer import lr_multiplier
from frostline.plan.selectors import Selector, parse_selectors
from frostline.model.tree import LayerNode, LayerTree, variable_size

__all__ = [
    "Freeze",
    "Inference",
    "LayerDecision",
    "LearningRate",
    "Plan",
    "Resolution",
    "Rule",
    "RuleMatch",
    "Unfreeze",
    "VariableDecision",
    "register_rule",
    "resolve",
]

SelectorsLike = str | Selector | Iterable[str | Selector]

_RULE_KINDS: dict[str, type[Rule]] = {}


def register_rule(cls: type[Rule]) -> type[Rule]:
    """Class decorator that makes a rule kind known to `Plan.from_dict`."""
    _RULE_KINDS[cls.kind] = cls
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
        for name, expected in self.fields.items():
            value = getattr(self, name)
            if not _is_instance(value, expected):
                raise PlanError(
                    f"{self.kind} rule: field {name!r} expects {expected.__name__}. "
                    f"Received: {value!r} (of type {type(value).__name__})."
                )
            if expected is float:
                object.__setattr__(self, name, float(value))

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
            config[name] = getattr(self, name)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, where: str = "rule") -> Rule:
        """Builds a rule from `get_config()` output; see `Plan.from_dict`."""
        allowed = (cls.kind, *cls.fields)
        for key in config:
            if key not in allowed:
                raise PlanError(
                    f"{where} ({cls.kind}): unknown field {key!r}. Expected fields: "
                    f"{', '.join(allowed)}. Received: {dict(config)!r}."
                    + did_you_mean(str(key), allowed)
                )
        value = config[cls.kind]
        if not (
            isinstance(value, str)
            or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
        ):
            raise PlanError(
                f"{where} ({cls.kind}): field {cls.kind!r} expects a selector string or a "
                f"non-empty list of them. Received: {value!r} (of type {type(value).__name__})."
            )
        kwargs = {}
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, expected in cls.fields.items():
            if name not in config:
                if defaults.get(name, dataclasses.MISSING) is dataclasses.MISSING:
                    raise PlanError(f"{where} ({cls.kind}): missing field {name!r}.")
                continue
            field_value = config[name]
            if not _is_instance(field_value, expected):
                raise PlanError(
                    f"{where} ({cls.kind}): field {name!r} expects {expected.__name__}. "
                    f"Received: {field_value!r} (of type {type(field_value).__name__})."
                )
            kwargs[name] = field_value
        try:
            selectors = parse_selectors(value)
        except PlanError as e:
            raise PlanError(f"{where} ({cls.kind}): {e}") from None
        return cls(selectors, **kwargs)


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
                f"Received: {self.multiplier!r}."
            )


@dataclasses.dataclass(frozen=True)
class Plan:
    """An immutable, ordered list of rules. Each method returns a new Plan.

    Rules apply in order; a later rule overrides an earlier one for the layers both
    select. Layers no rule selects keep the state they have in the model.

    Args:
        rules: The rules, in order. Defaults to none.

    Example:

    >>> plan = Plan().freeze("base").unfreeze("base/block5_*")
    >>> print(plan.to_yaml(), end="")
    rules:
    - freeze: base
    - unfreeze: base/block5_*
    """

    rules: tuple[Rule, ...] = ()

    def with_rule(self, rule: Rule) -> Plan:
        """A new plan with `rule` appended."""
        if not isinstance(rule, Rule):
            raise PlanError(f"Expected a frostline Rule. Received: {rule!r}")
        return Plan(self.rules + (rule,))

    def freeze(self, *selectors: SelectorsLike) -> Plan:
        """Freezes the selected layers (and everything inside selected containers).

        Args:
            *selectors: One or more selectors, or a list of them.

        Returns:
            A new Plan.

        Raises:
            PlanError: if a selector is malformed.
        """
        return self.with_rule(Freeze(_flatten_selectors(selectors)))

    def unfreeze(self, *selectors: SelectorsLike) -> Plan:
        """Unfreezes the selected layers (and everything inside selected containers).

        Args:
            *selectors: One or more selectors, or a list of them.

        Returns:
            A new Plan.

        Raises:
            PlanError: if a selector is malformed.
        """
        return self.with_rule(Unfreeze(_flatten_selectors(selectors)))

    def inference(self, *selectors: SelectorsLike, enabled: bool = True) -> Plan:
        """Runs the selected layers in inference mode during `fit`, even while trainable.

        BatchNormalization uses and keeps its moving statistics, Dropout is off; the
        layers' weights still train if they are trainable. Frozen BatchNormalization
        already runs in inference mode in Keras without this.

        Args:
            *selectors: One or more selectors, or a list of them.
            enabled: False undoes an earlier `inference` rule. Defaults to True.

        Returns:
            A new Plan.
        """
        return self.with_rule(Inference(_flatten_selectors(selectors), enabled=enabled))

    def lr(self, selectors: SelectorsLike, multiplier: float) -> Plan:
        """Scales the learning rate of the selected layers' weights by `multiplier`.

        Args:
            selectors: A selector or a list of them.
            multiplier: A number of 0 or more; 1 is the optimizer's own rate.

        Returns:
            A new Plan.
        """
        return self.with_rule(LearningRate(parse_selectors(selectors), multiplier=multiplier))

    def then(self, other: Plan) -> Plan:
        """A plan with this plan's rules followed by `other`'s."""
        return Plan(self.rules + other.rules)

    __add__ = then

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data: `{"rules": [{"freeze": "base"}, ...]}`."""
        return {"rules": [rule.get_config() for rule in self.rules]}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | Sequence[Any]) -> Plan:
        """Builds a plan from `to_dict()` output (or from its list of rules alone).

        Raises:
            PlanError: naming the rule, the field and what was received, for an unknown
                rule kind, an unknown or missing field, a value of the wrong type or a
                malformed selector.
        """
        if isinstance(config, (str, bytes)):
            raise PlanError(
                "Plan: expected a mapping with the key 'rules' (or a list of rules). "
                f"Received the text {config!r}. To read a file, pass a pathlib.Path or a "
                "name ending in .yaml or .yml."
            )
        if isinstance(config, Mapping):
            unknown = [k for k in config if k != "rules"]
            if unknown:
                raise PlanError(
                    f"Plan: unknown key {unknown[0]!r}. Expected a mapping with the single "
                    f"key 'rules'. Received keys: {list(config)}."
                    + did_you_mean(str(unknown[0]), ["rules"])
                )
            rules = config.get("rules") or []
        else:
            rules = config
        if not isinstance(rules, Sequence) or isinstance(rules, str):
            raise PlanError(
                f"Plan: 'rules' expects a list of rules. Received: {rules!r} "
                f"(of type {type(rules).__name__})."
            )
        parsed = []
        for i, item in enumerate(rules, start=1):
            where = f"Plan rule {i}"
            if not isinstance(item, Mapping):
                raise PlanError(
                    f"{where}: expected a mapping such as {{freeze: base}}. "
                    f"Received: {item!r} (of type {type(item).__name__})."
                )
            if not item:
                raise PlanError(
                    f"{where}: expected a mapping with one rule kind, such as "
                    "{freeze: base}. Received an empty mapping."
                )
            kinds = [k for k in item if k in _RULE_KINDS]
            if len(kinds) != 1:
                if kinds:
                    problem = f"has several rule kinds {kinds}"
                else:
                    first = str(next(iter(item)))
                    problem = f"unknown rule kind {first!r}"
                raise PlanError(
                    f"{where}: {problem}. Expected exactly one of: "
                    f"{', '.join(_RULE_KINDS)}. Received: {dict(item)!r}."
                    + (did_you_mean(first, _RULE_KINDS) if not kinds else "")
                )
            parsed.append(_RULE_KINDS[kinds[0]].from_config(item, where=where))
        return cls(tuple(parsed))

    @classmethod
    def from_model(cls, model: Any) -> Plan:
        """A plan that reproduces the model's current frozen set and inference modes.

        Applied to a copy of the model with every layer trainable, it gives the same
        `trainable_weights` and modes: one `unfreeze` and one `freeze` rule listing the
        layers that own weights, and one `inference` rule.
        """
        tree = LayerTree(model)
        trainable_ids = tree.effective_trainable_ids()
        names = [n.name for n in tree.layers]
        frozen, unfrozen, inference = [], [], []
        for node in tree.layers:
            selector = _exact_selector(node, names)
            if node.weights:
                target = unfrozen if any(id(v) in trainable_ids for v in node.weights) else frozen
                target.append(selector)
            if is_forced_inference(node.layer):
                inference.append(selector)
        plan = cls()
        if unfrozen:
            plan = plan.unfreeze(unfrozen)
        if frozen:
            plan = plan.freeze(frozen)
        if inference:
            plan = plan.inference(inference)
        return plan

    def to_yaml(self) -> str:
        """The plan as YAML text, readable by `Plan.from_yaml`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str]) -> Plan:
        """Reads a plan from YAML text or from the path of a YAML file.

        Raises:
            PlanError: for malformed YAML or a malformed plan (see `from_dict`).
            FileNotFoundError: for a path that does not exist.
        """
        text = str(source)
        if isinstance(source, os.PathLike) or ("\n" not in text and text.endswith((".yaml", ".yml"))):
            with open(source) as f:
                text = f.read()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise PlanError(f"Plan: malformed YAML{where}: {problem}.") from None
        if data is None:
            return cls()
        return cls.from_dict(data)

    def __str__(self) -> str:
        if not self.rules:
            return "Plan(no rules)"
        return "Plan(" + "; ".join(r.describe() for r in self.rules) + ")"


def _exact_selector(node: LayerNode, names: list[str]) -> str:
    """A selector that matches exactly this layer."""
    if any(c in node.path for c in "*?[]") or ("/" not in node.path and names.count(node.name) > 1):
        return "re:" + re.escape(node.path)
    return node.path


def _flatten_selectors(items: tuple[SelectorsLike, ...]) -> tuple[Selector, ...]:
    if not items:
        raise PlanError("Expected at least one selector. Received none.")
    out: list[Selector] = []
    for item in items:
        out.extend(parse_selectors(item))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class LayerDecision:
    """A layer's resolved settings and, for each, the index of the rule that set it
    (`None`: no rule selected the layer and the model's current value is kept).

    Attributes:
        node: The layer.
        settings: `{"trainable": bool, "inference": bool, "lr": float}`.
        decided_by: For each setting, the deciding rule's index or `None`.
    """

    node: LayerNode
    settings: Mapping[str, Any]
    decided_by: Mapping[str, int | None]

    @property
    def trainable(self) -> bool:
        """Whether the layer's weights train."""
        return bool(self.settings["trainable"])

    @property
    def inference(self) -> bool:
        """Whether frostline runs the layer in inference mode."""
        return bool(self.settings["inference"])

    @property
    def lr(self) -> float:
        """The layer's learning-rate multiplier."""
        return float(self.settings["lr"])


@dataclasses.dataclass(frozen=True)
class VariableDecision:
    """A variable's resolved trainability.

    Attributes:
        variable: The Keras variable.
        node: The layer that owns it.
        trainable: Whether training updates it.
        rule: Index (0-based) of the rule that decided, or `None` when no rule selected
            its layer (its current state is kept) or it is state that never trains.
        is_state: True for variables that never train whatever the flags, such as
            BatchNormalization's moving statistics.
        lr: The learning-rate multiplier of its updates.
    """

    variable: Any
    node: LayerNode
    trainable: bool
    rule: int | None
    is_state: bool
    lr: float = 1.0

    @property
    def size(self) -> int:
        """Number of scalars in the variable."""
        return variable_size(self.variable)

    @property
    def path(self) -> str:
        """The layer's canonical path and the variable's name: `"base/conv1/kernel"`."""
        return self.node.variable_path(self.variable)


@dataclasses.dataclass(frozen=True)
class RuleMatch:
    """What one rule selected: layers (containers expanded) and their parameters."""

    index: int
    rule: Rule
    layers: tuple[LayerNode, ...]
    params: int


@dataclasses.dataclass(frozen=True)
class Resolution:
    """The outcome of `resolve`: plain data, nothing in the model has changed yet."""

    tree: LayerTree
    plan: Plan
    layers: Mapping[int, LayerDecision]
    variables: tuple[VariableDecision, ...]
    matches: tuple[RuleMatch, ...]

    def decision(self, node: LayerNode) -> LayerDecision:
        """The decision for one layer of the tree."""
        return self.layers[id(node)]

    @property
    def trainable_variables(self) -> list:
        """The variables training will update, in canonical order."""
        return [d.variable for d in self.variables if d.trainable]

    def container_trainable(self, node: LayerNode) -> bool:
        """The `trainable` flag a layer needs for Keras to train what is resolved.

        A container must be trainable when anything inside it trains, and frozen when
        everything inside that can train is frozen; a layer without trainable weights
        anywhere inside it keeps its own decision (it matters for BatchNormalization).
        """
        inside = [d for d in self._variables_under(node) if not d.is_state]
        if inside:
            return any(d.trainable for d in inside)
        return self.layers[id(node)].trainable

    def _variables_under(self, node: LayerNode) -> list[VariableDecision]:
        ids = {id(n) for n in node.descendants()}
        return [d for d in self.variables if id(d.node) in ids]


def _user_stacklevel() -> int:
    """The `stacklevel` that makes a warning point at the first caller outside frostline."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package:
        frame, level = frame.f_back, level + 1
    return level


def resolve(plan: Plan, tree: LayerTree, *, strict: bool = True) -> Resolution:
    """Resolves a plan against a model's LayerTree. Pure: the model is not touched.

    Args:
        plan: The plan.
        tree: `LayerTree(model)`.
        strict: If True (default), a selector that matches nothing is a `PlanError`
            naming the closest paths; if False it is a warning.

    Returns:
        A `Resolution`: for every variable, trainable or not and which rule decided.

    Raises:
        PlanError: for a selector that matches nothing (when strict), an unknown
            `type:`, or a slice of a layer that holds no layers.
    """
    effective = tree.effective_trainable_ids()
    settings: dict[int, dict[str, Any]] = {}
    decided_by: dict[int, dict[str, int | None]] = {}
    for node in tree:
        if node.weights:
            trainable = any(id(v) in effective for v in node.weights)
        else:
            trainable = bool(node.layer.trainable)
        settings[id(node)] = {
            "trainable": trainable,
            "inference": is_forced_inference(node.layer),
            "lr": lr_multiplier(tree.model, node.weights[0]) if node.weights else 1.0,
        }
        decided_by[id(node)] = {key: None for key in settings[id(node)]}

    matches = []
    for index, rule in enumerate(plan.rules):
        selected: dict[int, LayerNode] = {}
        for selector in rule.selectors:
            try:
                found = selector.match(tree)
            except PlanError as e:
                raise PlanError(f"Rule {index + 1} ({rule.describe()}): {e}") from None
            if not found:
                message = (
                    f"Rule {index + 1} ({rule.describe()}): selector {selector.text!r} "
                    "matched no layer." + selector.suggestion(tree)
                )
                if strict:
                    raise PlanError(message)
                warnings.warn(message + " Skipped (strict=False).", stacklevel=_user_stacklevel())
            for node in found:
                for inner in node.descendants():
                    selected.setdefault(id(inner), inner)
        for key, value in rule.settings().items():
            for node_id in selected:
                settings[node_id][key] = value
                decided_by[node_id][key] = index
        params = sum(variable_size(v) for n in selected.values() for v in n.variables)
        ordered = tuple(n for n in tree if id(n) in selected)
        matches.append(RuleMatch(index, rule, ordered, params))

    layers = {
        id(node): LayerDecision(node, dict(settings[id(node)]), dict(decided_by[id(node)]))
        for node in tree
    }
    variables = []
    for node in tree:
        rule = decided_by[id(node)]["trainable"]
        lr = float(settings[id(node)]["lr"])
        for v in node.weights:
            if rule is None:
                # Untouched layers keep exactly what Keras trains now.
                variables.append(VariableDecision(v, node, id(v) in effective, None, False, lr))
            else:
                variables.append(VariableDecision(v, node, bool(settings[id(node)]["trainable"]), rule, False, lr))
        for v in node.states:
            variables.append(VariableDecision(v, node, False, None, True))
    return Resolution(tree, plan, layers, tuple(variables), tuple(matches))
