"""Plan: an immutable, ordered list of rules, with its dict and YAML forms."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from frostline.errors import MissingFileError, PlanError, did_you_mean, shorten
from frostline.model.modes import is_forced_inference
from frostline.model.tree import LayerTree
from frostline.plan.rules import RULE_KINDS, Freeze, Inference, LearningRate, Lora, Rule, SelectorsLike, Unfreeze
from frostline.plan.safe_yaml import MAX_YAML_BYTES, decode_yaml, load_yaml
from frostline.plan.selectors import Selector, exact_layer_selector, exact_variable_selector, parse_selectors

__all__ = ["Plan"]


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
            raise PlanError(f"Expected a frostline Rule. Received: {shorten(rule)}")
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

    def lora(self, selectors: SelectorsLike, rank: int, *, alpha: float | None = None) -> Plan:
        """Gives the selected layers LoRA adapters of `rank` (Keras's `enable_lora`).

        The adapters train; each adapted layer's kernel stays frozen whatever later
        rules say. In a selected container, every layer that supports LoRA is adapted.

        Args:
            selectors: A selector or a list of them, e.g. `"re:.*/(query|value)"`.
            rank: The adapters' rank, a positive integer.
            alpha: Scales the adapters' output by `alpha / rank`. Defaults to None:
                `rank` (a scale of 1).

        Returns:
            A new Plan.

        Raises:
            PlanError: for a rank that is not a positive integer or a bad alpha; when
                applied, for a selected layer that cannot take adapters.

        Example:

        >>> print(Plan().freeze("**").lora("re:.*/(query|value)", rank=8, alpha=16))
        Plan(freeze **; lora re:.*/(query|value) (rank 8, alpha 16))
        """
        return self.with_rule(Lora(parse_selectors(selectors), rank=rank, alpha=alpha))

    def then(self, other: Plan) -> Plan:
        """A plan with this plan's rules followed by `other`'s."""
        return Plan(self.rules + other.rules)

    __add__ = then

    def get_config(self) -> dict[str, Any]:
        """The plan as plain data: `{"rules": [{"freeze": "base"}, ...]}`.

        Example:

        >>> Plan().freeze("base").get_config()
        {'rules': [{'freeze': 'base'}]}
        """
        return {"rules": [rule.get_config() for rule in self.rules]}

    def to_dict(self) -> dict[str, Any]:
        """The same as `get_config()`."""
        return self.get_config()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Sequence[Any]) -> Plan:
        """Builds a plan from `get_config()` output (or from its list of rules alone).

        Raises:
            PlanError: naming the rule, the field and what was received, for an unknown
                rule kind, an unknown or missing field, a value of the wrong type or a
                malformed selector.
        """
        if isinstance(config, (str, bytes)):
            raise PlanError(
                "Plan: expected a mapping with the key 'rules' (or a list of rules). "
                f"Received the text {shorten(config)}. To read a file, pass a pathlib.Path or a "
                "name ending in .yaml or .yml."
            )
        if isinstance(config, Mapping):
            unknown = [k for k in config if k != "rules"]
            if unknown:
                raise PlanError(
                    f"Plan: unknown key {shorten(unknown[0])}. Expected a mapping with the single "
                    f"key 'rules'. Received keys: {shorten(list(config))}."
                    + did_you_mean(str(unknown[0])[:200], ["rules"])
                )
            rules = config.get("rules")
            if rules is None:  # `rules:` with nothing after it
                rules = []
        else:
            rules = config
        if not isinstance(rules, (list, tuple)):
            raise PlanError(
                f"Plan: 'rules' expects a list of rules, such as [{{freeze: base}}]. Received: "
                f"{shorten(rules)} (of type {type(rules).__name__})."
            )
        parsed = []
        for i, item in enumerate(rules, start=1):
            where = f"Plan rule {i}"
            if not isinstance(item, Mapping):
                raise PlanError(
                    f"{where}: expected a mapping such as {{freeze: base}}. "
                    f"Received: {shorten(item)} (of type {type(item).__name__})."
                )
            if not item:
                raise PlanError(
                    f"{where}: expected a mapping with one rule kind, such as "
                    "{freeze: base}. Received an empty mapping."
                )
            kinds = [k for k in item if k in RULE_KINDS]
            if len(kinds) != 1:
                if kinds:
                    problem = f"has several rule kinds {kinds}"
                else:
                    first = str(next(iter(item)))[:200]
                    problem = f"unknown rule kind {shorten(first)}"
                raise PlanError(
                    f"{where}: {problem}. Expected exactly one of: "
                    f"{', '.join(RULE_KINDS)}. Received: {shorten(dict(item))}."
                    + (did_you_mean(first, RULE_KINDS) if not kinds else "")
                )
            parsed.append(RULE_KINDS[kinds[0]].from_config(item, where=where))
        return cls(tuple(parsed))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | Sequence[Any]) -> Plan:
        """The same as `from_config(config)`."""
        return cls.from_config(config)

    @classmethod
    def from_model(cls, model: Any) -> Plan:
        """A plan that reproduces the model's current frozen set and inference modes.

        Applied to a copy of the model with every layer trainable, it gives the same
        `trainable_weights` and modes: one `unfreeze` and one `freeze` rule listing the
        layers that own weights, a `freeze` rule of `var:` selectors for the frozen
        variables of layers that are partly frozen, and one `inference` rule.
        """
        tree = LayerTree(model)
        trainable_ids = tree.effective_trainable_ids()
        names = [n.name for n in tree.layers]
        frozen, unfrozen, frozen_variables, inference = [], [], [], []
        for node in tree.layers:
            selector = exact_layer_selector(node, names)
            if node.weights:
                trains = [id(v) in trainable_ids for v in node.weights]
                (unfrozen if any(trains) else frozen).append(selector)
                if any(trains) and not all(trains):
                    frozen_variables += [exact_variable_selector(node.variable_path(v)) for v, t in zip(node.weights, trains) if not t]
            if is_forced_inference(node.layer):
                inference.append(selector)
        plan = cls()
        for rule, selectors in ((cls.unfreeze, unfrozen), (cls.freeze, frozen), (cls.freeze, frozen_variables),
                                (cls.inference, inference)):
            if selectors:
                plan = rule(plan, selectors)
        return plan

    def to_yaml(self) -> str:
        """The plan as YAML text, readable by `Plan.from_yaml`."""
        return yaml.safe_dump(self.get_config(), sort_keys=False)

    @classmethod
    def from_yaml(cls, source: str | bytes | os.PathLike[str]) -> Plan:
        """Reads a plan from YAML text (or UTF-8 bytes) or from the path of a YAML file.

        Reading is bounded: anchors and aliases (`&a`, `*a`) are refused, and so are a key
        written twice in one mapping, nesting over 64 levels and text over 64 MiB.

        Raises:
            PlanError: for malformed YAML (including invalid UTF-8, a refused alias, a
                duplicate key, a bad date or integer) or a malformed plan (see
                `from_config`).
            MissingFileError: (a `FileNotFoundError`) for a path that does not exist.
        """
        if isinstance(source, bytes):
            source = decode_yaml(source, error=PlanError, what="Plan")
        if not isinstance(source, (str, os.PathLike)):
            raise PlanError(f"Plan.from_yaml: expected YAML text or a path. Received: {shorten(source)} "
                            f"(of type {type(source).__name__}).")
        text = str(source)
        if isinstance(source, os.PathLike) or ("\n" not in text and text.endswith((".yaml", ".yml"))):
            if not os.path.isfile(source):
                raise MissingFileError(f"Plan: no such file: {shorten(text)}")
            with open(source, "rb") as f:
                text = decode_yaml(f.read(MAX_YAML_BYTES + 1), error=PlanError, what=f"Plan file {shorten(text)}")
        data = load_yaml(text, error=PlanError, what="Plan")
        if data is None:
            return cls()
        return cls.from_config(data)

    def __str__(self) -> str:
        if not self.rules:
            return "Plan(no rules)"
        return "Plan(" + "; ".join(r.describe() for r in self.rules) + ")"


def _flatten_selectors(items: tuple[SelectorsLike, ...]) -> tuple[Selector, ...]:
    if not items:
        raise PlanError("Expected at least one selector. Received none.")
    out: list[Selector] = []
    for item in items:
        out.extend(parse_selectors(item))
    return tuple(out)


