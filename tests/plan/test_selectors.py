import pytest

import frostline as fl
from frostline.plan.selectors import NameSelector, PathSelector, RegexSelector, SliceSelector, TypeSelector
from model_zoo import nested, sequential, shared


def paths(selector, model):
    return [n.path for n in fl.parse_selector(selector).match(fl.LayerTree(model))]


def test_parse_picks_the_selector_kind_from_the_text():
    assert isinstance(fl.parse_selector("block5_conv1"), NameSelector)
    assert isinstance(fl.parse_selector("base/block5_*"), PathSelector)
    assert isinstance(fl.parse_selector("re:base/.*"), RegexSelector)
    assert isinstance(fl.parse_selector("type:Dense"), TypeSelector)
    assert isinstance(fl.parse_selector("base[:-5]"), SliceSelector)
    assert isinstance(fl.parse_selector("[2:4]"), SliceSelector)
    assert isinstance(fl.parse_selector("conv[12]"), NameSelector)


def test_bare_name_matches_at_any_depth():
    model = nested()
    assert paths("conv1", model) == ["base/block5/conv1"]
    assert paths("conv*", model) == ["base/block5/conv1", "base/block5/conv2"]
    assert paths("conv[2]", model) == ["base/block5/conv2"]
    assert paths("stem?bn", model) == ["base/stem_bn"]


def test_path_glob_star_stays_in_segment_double_star_crosses():
    model = nested()
    top = fl.parse_selector("base/*").match(fl.LayerTree(model))
    assert [n.class_name for n in top] == ["InputLayer", "Dense", "BatchNormalization", "Sequential"]
    assert [n.path for n in top][1:] == ["base/stem", "base/stem_bn", "base/block5"]
    assert "base/block5/conv1" not in paths("base/*", model)
    assert paths("base/**/conv2", model) == ["base/block5/conv2"]
    assert "base/block5/conv1" in paths("base/**", model)


def test_regex_selector_must_match_the_whole_path():
    model = nested()
    assert paths("re:base/block5/conv[12]", model) == ["base/block5/conv1", "base/block5/conv2"]
    assert paths("re:conv1", model) == []  # fullmatch on paths, not search


def test_type_matches_class_and_base_classes():
    model = nested()
    assert paths("type:BatchNormalization", model) == ["base/stem_bn"]
    assert paths("type:Functional", model) == ["base"]
    # Sequential and Functional are both keras.Model subclasses.
    assert paths("type:Model", model) == ["base", "base/block5"]


def test_slice_of_container_mirrors_layers_slicing():
    model = sequential()
    expected = [layer.name for layer in model.layers[:-2]]
    assert paths("[:-2]", model) == expected
    outer = nested()
    base = outer.get_layer("base")
    assert paths("base[1:3]", outer) == ["base/" + l.name for l in base.layers[1:3]]
    assert paths("base[::2]", outer) == ["base/" + l.name for l in base.layers[::2]]


def test_shared_layer_matches_through_any_of_its_paths():
    model = shared()
    assert paths("right/common", model) == ["left/common"]
    assert paths("left/common", model) == ["left/common"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("re:base/(", "malformed regular expression"),
        ("", "empty selector"),
        ("type:not a name", "Expected a class name"),
        ("base[::0]", "step of 0"),
    ],
)
def test_malformed_selectors_raise_plan_error(text, message):
    with pytest.raises(fl.PlanError, match=message):
        fl.parse_selector(text)


def test_non_string_selector_is_plan_error():
    with pytest.raises(fl.PlanError, match="Expected a selector string.*Received: 3"):
        fl.parse_selector(3)


def test_unknown_type_suggests_the_close_one():
    with pytest.raises(fl.PlanError, match="Unknown layer type 'BatchNorm'.*Did you mean 'BatchNormalization'"):
        fl.parse_selector("type:BatchNorm").match(fl.LayerTree(nested()))


def test_known_type_absent_from_model_matches_nothing():
    assert paths("type:LSTM", nested()) == []


def test_slice_of_a_layer_without_sublayers_is_plan_error():
    with pytest.raises(fl.PlanError, match="slices 'head', a Dense that holds no layers"):
        fl.parse_selector("head[:2]").match(fl.LayerTree(nested()))


def test_repeated_names_are_selectable_by_their_path_segment():
    import keras

    class Three(keras.Model):
        def __init__(self):
            super().__init__(name="three")
            self.layers_list = [keras.layers.Dense(2, name="dense") for _ in range(3)]

        def call(self, x):
            for layer in self.layers_list:
                x = layer(x)
            return x

    model = Three()
    model(keras.ops.ones((1, 2)))
    assert paths("dense~2", model) == ["dense~2"]
    assert paths("dense", model) == ["dense", "dense~2", "dense~3"]


def test_unknown_type_suggests_a_class_in_the_model_first():
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="c")])
    with pytest.raises(fl.PlanError, match="Did you mean 'Conv2D'"):
        fl.parse_selector("type:Conv2d").match(fl.LayerTree(model))
