"""resolve: a plan against a layer tree, to plain data. Pure: the model is not touched."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

from frostline.errors import PlanError
from frostline.model.modes import is_forced_inference
from frostline.model.tree import LayerNode, LayerTree, variable_size
from frostline.plan.plan import Plan
from frostline.plan.rules import Rule

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
            "lr": tree.lr_multiplier(node.weights[0]) if node.weights else 1.0,
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
