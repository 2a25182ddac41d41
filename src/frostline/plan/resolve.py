"""resolve: a plan against a layer tree, to plain data. Pure: the model is not touched."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

from frostline.errors import PlanError, shorten
from frostline.model.adapters import adapter_variables, base_variable, is_quantized, lora_rank, lora_unsupported_reason
from frostline.model.modes import is_forced_inference
from frostline.model.tree import LayerNode, LayerTree, variable_size
from frostline.plan.plan import Plan
from frostline.plan.rules import Rule
from frostline.plan.selectors import Selector, VariableSelector

__all__ = ["LayerDecision", "Resolution", "RuleMatch", "VariableDecision", "resolve"]


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
    adapters: tuple[tuple[LayerNode, int, float | None], ...] = ()
    """`(layer, rank, alpha)` for each layer a `lora` rule adapts that has no adapters yet."""

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
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def resolve(plan: Plan, tree: LayerTree, *, strict: bool = True) -> Resolution:
    """Resolves a plan against a model's LayerTree. Pure: reads the tree, not the model.

    Rules apply in order, each to the layers (containers expanded) or, for `var:`
    selectors, the single variables it selects; a later rule overrides an earlier one
    for what both select. What no rule selects keeps the state it has now.

    Args:
        plan: The plan.
        tree: `LayerTree(model)`.
        strict: If True (default), a selector that matches nothing is a `PlanError`
            naming the closest paths; if False it is a warning.

    Returns:
        A `Resolution`: for every variable, trainable or not and which rule decided.

    Raises:
        PlanError: for a selector that matches nothing (when strict), an unknown
            `type:`, a slice of a layer that holds no layers, a `var:` selector in a
            rule that sets a layer's mode, or a rule that would train a variable
            that never trains.
    """
    effective = tree.effective_trainable_ids()
    settings = {id(node): _current_settings(node, tree, effective) for node in tree}
    decided_by = {id(node): {key: None for key in settings[id(node)]} for node in tree}
    # Per variable: {setting: (value, deciding rule)}; layer rules write through to their
    # layers' variables, so whichever rule came last decides.
    by_variable: dict[int, dict[str, tuple[Any, int]]] = {}
    # Kernels LoRA keeps frozen, with the rule that adapted them (None: adapted before).
    locked = {id(base_variable(n.layer)): None for n in tree if lora_rank(n.layer)}
    adapters: dict[int, tuple[LayerNode, int, float | None]] = {}
    matches = []
    unfrozen_quantized = []
    for index, rule in enumerate(plan.rules):
        layers, variables, direct = _select(index, rule, tree, strict)
        unfrozen_quantized.append((_rule_name(index, rule), _quantized_unfrozen(rule, layers, variables)))
        for key, value in rule.settings().items():
            if key == "lora":
                for node in _lora_targets(index, rule, layers, direct):
                    _adapt(node, value, index, by_variable, locked, adapters)
                continue
            for node in layers:
                settings[id(node)][key] = value
                decided_by[id(node)][key] = index
                for v in node.variables:
                    by_variable.setdefault(id(v), {})[key] = (value, index)
            for _, v in variables:
                by_variable.setdefault(id(v), {})[key] = (value, index)
        matches.append(_rule_match(index, rule, tree, layers, variables))
    _check_quantized(unfrozen_quantized, locked)
    layer_decisions = {
        id(node): LayerDecision(node, dict(settings[id(node)]), dict(decided_by[id(node)])) for node in tree
    }
    decisions = tuple(_decide_variables(tree, effective, by_variable, locked))
    return Resolution(tree, plan, layer_decisions, decisions, tuple(matches), tuple(adapters.values()))


def _rule_name(index: int, rule: Rule) -> str:
    """`Rule 2 (unfreeze base/block5_*)`, its description cut to 80 characters."""
    text = rule.describe()
    return f"Rule {index + 1} ({text if len(text) <= 80 else text[:77] + '...'})"


def _lora_targets(index: int, rule: Rule, layers: list[LayerNode], direct: list[LayerNode]) -> list[LayerNode]:
    """The layers a lora rule adapts: every selected layer that supports LoRA; a selected
    layer (not a container) that does not is an error, and so is a rule adapting none."""
    where = _rule_name(index, rule)
    refused = [(n, lora_unsupported_reason(n.layer)) for n in direct if not n.is_container]
    refused = [(n, reason) for n, reason in refused if reason is not None]
    if refused:
        listed = "; ".join(f"{n.path!r} ({n.class_name}): {reason}" for n, reason in refused[:5])
        raise PlanError(f"{where}: cannot give LoRA adapters to {listed}. Select Dense, EinsumDense, "
                        "Embedding or convolution layers, e.g. 're:.*/(query|value)'.")
    targets = [n for n in layers if not n.is_container and lora_unsupported_reason(n.layer) is None]
    if not targets:
        raise PlanError(f"{where}: the selected layers hold no layer that supports LoRA (Dense, EinsumDense, "
                        "Embedding or convolutions).")
    return targets


def _adapt(node: LayerNode, value: tuple, index: int, by_variable: dict, locked: dict, adapters: dict) -> None:
    rank, alpha = value
    current = lora_rank(node.layer)
    if current is None and id(node) in adapters:
        current = adapters[id(node)][1]  # adapted by an earlier rule of this plan
    if current is not None and current != rank:
        raise PlanError(
            f"Rule {index + 1} (lora {node.path}, rank {rank}): {node.path!r} already has LoRA "
            f"adapters of rank {current}; Keras adapts a layer once. Use rank={current}, or merge "
            "the adapters first (fl.merge_adapters)."
        )
    if lora_rank(node.layer) is None:
        adapters[id(node)] = (node, rank, alpha)
    for v in adapter_variables(node.layer):
        by_variable.setdefault(id(v), {})["trainable"] = (True, index)
    locked[id(base_variable(node.layer))] = index


def _current_settings(node: LayerNode, tree: LayerTree, effective: set[int]) -> dict[str, Any]:
    if node.weights:
        trainable = any(id(v) in effective for v in node.weights)
    else:
        trainable = bool(node.layer.trainable)
    return {
        "trainable": trainable,
        "inference": is_forced_inference(node.layer),
        "lr": tree.lr_multiplier(node.weights[0]) if node.weights else 1.0,
    }


def _select(index: int, rule: Rule, tree: LayerTree, strict: bool) -> tuple[list[LayerNode], list[tuple], list[LayerNode]]:
    """The layers (containers expanded), the `(node, variable)` pairs, and the layers
    named directly (containers not expanded) that a rule selects."""
    layers: dict[int, LayerNode] = {}
    direct: dict[int, LayerNode] = {}
    variables: dict[int, tuple[LayerNode, Any]] = {}
    where = _rule_name(index, rule)
    for selector in rule.selectors:
        try:
            if isinstance(selector, VariableSelector):
                _check_variable_rule(where, rule, selector)
                found = selector.match_variables(tree)
            else:
                found = selector.match(tree)
        except PlanError as e:
            raise PlanError(f"{where}: {e}") from None
        if not found:
            what = "variable" if isinstance(selector, VariableSelector) else "layer"
            message = f"{where}: selector {shorten(selector.text)} matched no {what}." + selector.suggestion(tree)
            if strict:
                raise PlanError(message)
            warnings.warn(message + " Skipped (strict=False).", stacklevel=_user_stacklevel())
        if isinstance(selector, VariableSelector):
            for node, v in found:
                variables.setdefault(id(v), (node, v))
        else:
            for node in found:
                direct.setdefault(id(node), node)
                for inner in node.descendants():
                    layers.setdefault(id(inner), inner)
    ordered = [n for n in tree if id(n) in layers]
    _check_never_trained(where, rule, ordered, list(variables.values()))
    return ordered, list(variables.values()), list(direct.values())


def _check_variable_rule(where: str, rule: Rule, selector: Selector) -> None:
    unsupported = sorted(set(rule.settings()) - _VARIABLE_SETTINGS)
    if unsupported:
        raise PlanError(
            f"selector {shorten(selector.text)} names variables, but the {rule.kind} rule sets "
            f"{', '.join(unsupported)}, which belongs to a layer. Expected a layer selector "
            f"here, e.g. {shorten(selector.text[len('var:'):].rsplit('/', 1)[0])}."
        )


def _quantized_unfrozen(rule: Rule, layers: list[LayerNode], variables: list[tuple]) -> list[tuple[str, int]]:
    """`(path, id)` of the quantized variables a rule would unfreeze."""
    if rule.settings().get("trainable") is not True:
        return []
    # An integer variable of a layer that is not quantized is a count or an index
    # (Normalization's `count`), which never trains and is not a quantized kernel.
    quantized = lambda n, v: is_quantized(v) and getattr(n.layer, "quantization_mode", None) is not None  # noqa: E731
    found = [(n, v) for n in layers for v in n.variables if quantized(n, v)]
    found += [(n, v) for n, v in variables if quantized(n, v)]
    return [(n.variable_path(v), id(v)) for n, v in found]


def _check_quantized(unfrozen: list[tuple[str, list[tuple[str, int]]]], locked: dict) -> None:
    """A rule that would unfreeze a quantized kernel is an error, unless LoRA keeps that
    kernel frozen (an adapted layer, before or by any rule of the plan)."""
    for where, found in unfrozen:
        quantized = [path for path, key in found if key not in locked]
        if quantized:
            raise PlanError(
                f"{where}: would unfreeze quantized weights {', '.join(repr(p) for p in quantized[:3])}"
                + (f" and {len(quantized) - 3} more" if len(quantized) > 3 else "")
                + ", which cannot train. Expected layers that are not quantized, or LoRA adapters on the "
                "quantized ones (Plan.lora, then unfreeze 'var:**/lora_*' if they were frozen)."
            )


def _check_never_trained(where: str, rule: Rule, layers: list[LayerNode], variables: list[tuple]) -> None:
    if rule.settings().get("trainable") is not True:
        return
    states = [node.variable_path(v) for node, v in variables if any(v is s for s in node.states)]
    if states:
        raise PlanError(
            f"{where}: {', '.join(repr(p) for p in states[:3])} never train (statistics Keras "
            "updates itself, such as BatchNormalization's moving mean and variance). Expected "
            "variables that can train, e.g. a kernel or a bias; use an inference rule to keep "
            "statistics fixed."
        )


def _rule_match(index: int, rule: Rule, tree: LayerTree, layers: list[LayerNode], variables: list[tuple]) -> RuleMatch:
    counted = {id(v): v for n in layers for v in n.variables}
    counted.update((id(v), v) for _, v in variables)
    owners = {id(n) for n in layers} | {id(n) for n, _ in variables}
    ordered = tuple(n for n in tree if id(n) in owners)
    return RuleMatch(index, rule, ordered, sum(variable_size(v) for v in counted.values()))


def _decide_variables(tree: LayerTree, effective: set[int], by_variable: dict, locked: dict) -> list[VariableDecision]:
    decisions = []
    for node in tree:
        for v in node.weights:
            chosen = by_variable.get(id(v), {})
            # Untouched variables keep exactly what Keras trains now.
            trainable, rule = chosen.get("trainable", (id(v) in effective, None))
            if id(v) in locked:  # a LoRA-adapted kernel stays frozen
                trainable, rule = False, locked[id(v)]
            lr = chosen.get("lr", (tree.lr_multiplier(v), None))[0]
            decisions.append(VariableDecision(v, node, bool(trainable), rule, False, float(lr)))
        for v in node.states:
            decisions.append(VariableDecision(v, node, False, None, True))
    return decisions


# What a rule may set on a single variable; modes belong to layers.
_VARIABLE_SETTINGS = {"trainable", "lr"}
