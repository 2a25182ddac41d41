import dataclasses

import pytest

import frostline as fl
from model_zoo import nested, shared


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


def test_later_rules_override_earlier():
    tree = fl.LayerTree(nested())
    res = fl.resolve(fl.Plan().freeze("base").unfreeze("base/block5"), tree)
    trainable = {d.path for d in res.variables if d.trainable}
    assert trainable == {
        "base/block5/conv1/kernel", "base/block5/conv1/bias",
        "base/block5/conv2/kernel", "base/block5/conv2/bias", "head/kernel", "head/bias",
    }
    by_var = {d.path: d for d in res.variables}
    assert by_var["base/block5/conv1/kernel"].rule == 1
    assert by_var["base/stem/kernel"].rule == 0
    assert by_var["head/kernel"].rule is None  # untouched: kept as it is in the model


def test_resolve_is_pure():
    model = nested()
    before = [v.trainable for v in model.weights] + [l.trainable for l in model._flatten_layers()]
    fl.resolve(fl.Plan().freeze("**"), fl.LayerTree(model))
    after = [v.trainable for v in model.weights] + [l.trainable for l in model._flatten_layers()]
    assert before == after


def test_state_variables_never_train_and_are_marked():
    res = fl.resolve(fl.Plan().unfreeze("stem_bn"), fl.LayerTree(nested()))
    states = {d.variable.name: d for d in res.variables if d.node.name == "stem_bn"}
    assert states["moving_mean"].is_state and not states["moving_mean"].trainable
    assert states["gamma"].trainable and not states["gamma"].is_state


def test_rule_match_counts_layers_and_params():
    res = fl.resolve(fl.Plan().freeze("base/block5"), fl.LayerTree(nested()))
    (match,) = res.matches
    assert [n.path for n in match.layers] == ["base/block5", "base/block5/conv1", "base/block5/conv2"]
    assert match.params == 2 * (5 * 5 + 5)


def test_selecting_a_shared_layer_freezes_it_once():
    res = fl.resolve(fl.Plan().freeze("right"), fl.LayerTree(shared()))
    frozen = {d.path for d in res.variables if not d.trainable}
    assert frozen == {"left/common/kernel", "left/common/bias", "right/r2/kernel", "right/r2/bias"}


def test_dict_and_yaml_round_trip():
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


def test_yaml_file_path(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("rules:\n- freeze: base\n")
    assert fl.Plan.from_yaml(path) == fl.Plan().freeze("base")
    assert fl.Plan.from_yaml(str(path)) == fl.Plan().freeze("base")


def test_then_concatenates():
    assert (fl.Plan().freeze("a") + fl.Plan().unfreeze("b")) == fl.Plan().freeze("a").unfreeze("b")


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


def test_plan_error_is_value_error():
    assert issubclass(fl.PlanError, ValueError)


def test_no_match_lists_closest_paths():
    tree = fl.LayerTree(nested())
    with pytest.raises(fl.PlanError, match=r"selector 'conv3' matched no layer\. Did you mean 'conv[12]'\?") as e:
        fl.resolve(fl.Plan().freeze("conv3"), tree)
    assert "'base/block5/conv1'" in str(e.value) and "'base/block5/conv2'" in str(e.value)
    with pytest.raises(fl.PlanError, match=r"Did you mean 'stem_bn'\? Closest paths: 'base/stem_bn'"):
        fl.resolve(fl.Plan().freeze("stem_nb"), tree)
    with pytest.raises(fl.PlanError, match=r"Did you mean 'base/block5/conv2'"):
        fl.resolve(fl.Plan().freeze("base/block5/conv22"), tree)


def test_no_match_is_a_warning_when_not_strict():
    tree = fl.LayerTree(nested())
    with pytest.warns(UserWarning, match="matched no layer"):
        res = fl.resolve(fl.Plan().freeze("head", "nothing_here"), tree, strict=False)
    assert {d.path for d in res.variables if not d.trainable and not d.is_state} == {
        "head/kernel", "head/bias",
    }


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


def test_errors_from_matching_name_the_rule():
    with pytest.raises(fl.PlanError, match=r"^Rule 2 \(freeze type:Dens\): Unknown layer type 'Dens'.*Did you mean 'Dense'"):
        fl.resolve(fl.Plan().freeze("base").freeze("type:Dens"), fl.LayerTree(nested()))


def test_slice_of_a_missing_container_follows_strict():
    tree = fl.LayerTree(nested())
    with pytest.raises(fl.PlanError, match=r"Rule 1 \(freeze bsae\[:-1\]\).*Its container 'bsae' matched no layer\. Did you mean 'base'"):
        fl.resolve(fl.Plan().freeze("bsae[:-1]"), tree)
    with pytest.warns(UserWarning, match="matched no layer") as record:
        fl.resolve(fl.Plan().freeze("bsae[:-1]"), tree, strict=False)
    assert record[0].filename == __file__  # points at the caller, not at frostline


def test_empty_rule_mapping_message():
    with pytest.raises(fl.PlanError, match="Plan rule 1: expected a mapping with one rule kind.*Received an empty mapping"):
        fl.Plan.from_dict({"rules": [{}]})


def test_fields_are_checked_when_rules_are_built_directly():
    with pytest.raises(fl.PlanError, match=r"inference rule: field 'enabled' expects bool\. Received: 'yes'"):
        fl.Inference(("base",), enabled="yes")


def test_malformed_yaml_message_is_short():
    with pytest.raises(fl.PlanError) as e:
        fl.Plan.from_yaml("rules: [freeze: base\n")
    assert "\n" not in str(e.value) and "^" not in str(e.value)
    assert str(e.value).startswith("Plan: malformed YAML at line 2, column 1")


def test_type_suggestion_ignores_case():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.ReLU(name="r")])
    with pytest.raises(fl.PlanError, match="Did you mean 'ReLU'"):
        fl.resolve(fl.Plan().freeze("type:Relu"), fl.LayerTree(model))
