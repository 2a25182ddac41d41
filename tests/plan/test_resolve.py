"""`fl.resolve`: what a plan means for one model, worked out without changing it."""

import pytest

import frostline as fl
from model_zoo import nested, shared


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


def test_resolve_changes_no_flag_of_the_model():
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


def test_unknown_type_suggestion_ignores_case():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.ReLU(name="r")])
    with pytest.raises(fl.PlanError, match="Did you mean 'ReLU'"):
        fl.resolve(fl.Plan().freeze("type:Relu"), fl.LayerTree(model))
