"""`Plan`: an immutable list of rules, built by chaining, read from and written to dicts and YAML."""

import dataclasses

import pytest

import frostline as fl


def test_plan_is_immutable_and_chainable():
    empty = fl.Plan()
    plan = empty.freeze("base")
    longer = plan.unfreeze("base/block5/*")
    assert empty.rules == ()
    assert len(plan.rules) == 1 and len(longer.rules) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rules = ()


def test_freeze_accepts_several_selectors_and_lists():
    plan = fl.Plan().freeze("a", ["b", "c"])
    assert [s.text for s in plan.rules[0].selectors] == ["a", "b", "c"]


def test_plus_appends_the_rules_of_the_second_plan():
    assert (fl.Plan().freeze("a") + fl.Plan().unfreeze("b")) == fl.Plan().freeze("a").unfreeze("b")


def test_plan_round_trips_through_dict_and_yaml():
    plan = fl.Plan().freeze("base").unfreeze("base/block5_*", "type:BatchNormalization").freeze("[:2]")
    assert fl.Plan.from_dict(plan.to_dict()) == plan
    assert fl.Plan.from_yaml(plan.to_yaml()) == plan
    assert plan.to_dict() == {
        "rules": [
            {"freeze": "base"},
            {"unfreeze": ["base/block5_*", "type:BatchNormalization"]},
            {"freeze": "[:2]"},
        ]
    }


def test_from_yaml_reads_a_file_given_as_a_path(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("rules:\n- freeze: base\n")
    assert fl.Plan.from_yaml(path) == fl.Plan().freeze("base")
    assert fl.Plan.from_yaml(str(path)) == fl.Plan().freeze("base")


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("rules:\n- freez: base\n", r"Plan rule 1: unknown rule kind 'freez'.*Did you mean 'freeze'"),
        ("rules:\n- freeze: base\n- unfreeze: base\n  multiplier: 2\n",
         r"Plan rule 2 \(unfreeze\): unknown field 'multiplier'.*Received: \{'unfreeze': 'base', 'multiplier': 2\}"),
        ("rules:\n- freeze: 3\n", r"Plan rule 1 \(freeze\): field 'freeze' expects a selector string.*Received: 3 \(of type int\)"),
        ("rules:\n- freeze: []\n", r"Plan rule 1 \(freeze\): field 'freeze' expects"),
        ("rules:\n- freeze: base\n  unfreeze: head\n", r"Plan rule 1: has several rule kinds"),
        ("rules:\n- base\n", r"Plan rule 1: expected a mapping.*Received: 'base'"),
        ("rule:\n- freeze: base\n", r"unknown key 'rule'.*Did you mean 'rules'"),
        ("rules:\n- freeze: 're:('\n", r"Plan rule 1 \(freeze\): Received a malformed regular expression"),
        ("rules: [\n", r"malformed YAML"),
        ("plan.txt", r"Received the text 'plan.txt'. To read a file, pass a pathlib.Path"),
    ],
)
def test_bad_yaml_plans_name_rule_field_and_value(yaml_text, message):
    with pytest.raises(fl.PlanError, match=message):
        fl.Plan.from_yaml(yaml_text)


def test_malformed_yaml_message_is_one_short_line():
    with pytest.raises(fl.PlanError) as e:
        fl.Plan.from_yaml("rules: [freeze: base\n")
    assert "\n" not in str(e.value) and "^" not in str(e.value)
    assert str(e.value).startswith("Plan: malformed YAML at line 2, column 1")


def test_empty_rule_mapping_is_refused_naming_the_shape_expected():
    with pytest.raises(fl.PlanError, match="Plan rule 1: expected a mapping with one rule kind.*Received an empty mapping"):
        fl.Plan.from_dict({"rules": [{}]})


def test_plan_error_is_a_value_error():
    assert issubclass(fl.PlanError, ValueError)
