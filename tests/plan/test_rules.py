"""Rule kinds: the built-in ones check their fields however they are built, and new kinds
can be registered."""

import dataclasses

import pytest

import frostline as fl
from model_zoo import nested


def test_rule_kinds_are_open_and_fields_are_checked():
    from typing import ClassVar

    @fl.register_rule
    @dataclasses.dataclass(frozen=True)
    class SetTrainable(fl.Rule):
        kind: ClassVar[str] = "set_trainable_for_test"
        fields: ClassVar[dict] = {"value": bool}
        value: bool = True

        def settings(self):
            return {"trainable": self.value}

    plan = fl.Plan.from_dict({"rules": [{"set_trainable_for_test": "base", "value": False}]})
    assert plan.rules == (SetTrainable(("base",), value=False),)
    assert fl.Plan.from_dict(plan.to_dict()) == plan
    res = fl.resolve(plan, fl.LayerTree(nested()))
    assert not any(d.trainable for d in res.variables if d.path.startswith("base/"))
    with pytest.raises(fl.PlanError, match=r"field 'value' expects bool\. Received: 1 \(of type int\)"):
        fl.Plan.from_dict({"rules": [{"set_trainable_for_test": "base", "value": 1}]})


def test_rules_built_directly_check_their_selectors():
    assert fl.Freeze(("base",)) == fl.Plan().freeze("base").rules[0]
    with pytest.raises(fl.PlanError, match="Expected a selector string"):
        fl.Freeze((3,))


def test_fields_are_checked_when_rules_are_built_directly():
    with pytest.raises(fl.PlanError, match=r"inference rule: field 'enabled' expects bool\. Received: 'yes'"):
        fl.Inference(("base",), enabled="yes")


def test_inference_rule_round_trips_through_yaml():
    plan = fl.Plan().inference("type:BatchNormalization").inference("drop", enabled=False)
    assert plan.to_dict() == {
        "rules": [{"inference": "type:BatchNormalization"}, {"inference": "drop", "enabled": False}]
    }
    assert fl.Plan.from_yaml(plan.to_yaml()) == plan
    with pytest.raises(fl.PlanError, match=r"field 'enabled' expects bool\. Received: 'no'"):
        fl.Plan.from_dict({"rules": [{"inference": "drop", "enabled": "no"}]})


def test_lr_rule_round_trips_through_dict_and_yaml():
    plan = fl.Plan().lr("base/**", 0.1).lr("head", 2)
    assert plan.to_dict() == {"rules": [{"lr": "base/**", "multiplier": 0.1}, {"lr": "head", "multiplier": 2.0}]}
    assert fl.Plan.from_yaml(plan.to_yaml()) == plan


@pytest.mark.parametrize(
    "config, message",
    [
        ({"lr": "head"}, r"missing field 'multiplier'"),
        ({"lr": "head", "multiplier": "fast"}, r"field 'multiplier' expects float\. Received: 'fast'"),
        ({"lr": "head", "multiplier": -1}, r"expects a finite number of 0 or more\. Received: -1"),
    ],
)
def test_lr_rule_refuses_a_missing_or_bad_multiplier(config, message):
    with pytest.raises(fl.PlanError, match=message):
        fl.Plan.from_dict({"rules": [config]})
