import keras
import pytest

import frostline as fl
from model_zoo import applications, nested, shared, subclassed


def test_every_variable_counted_once_and_matches_keras(any_model):
    tree = fl.LayerTree(any_model)
    ids = [id(v) for v in tree.variables()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(v) for v in any_model.weights}


def test_own_variables_are_not_childrens(any_model):
    tree = fl.LayerTree(any_model)
    for node in tree:
        inside = {id(v) for child in node.descendants(include_self=False) for v in child.variables}
        assert not inside & {id(v) for v in node.variables}, node.path


def test_paths_of_nested_models_three_levels():
    tree = fl.LayerTree(nested())
    paths = [n.path for n in tree.layers]
    assert "base/block5/conv1" in paths
    assert "base/stem_bn" in paths
    node = tree.node(tree.model.get_layer("base").get_layer("block5").layers[0])
    assert node.path == "base/block5/conv1"
    assert node.parent.path == "base/block5"
    assert node.depth == 3


def test_subclassed_model_attributes_and_lists():
    model = subclassed()
    tree = fl.LayerTree(model)
    assert [n.path for n in tree.layers] == [
        "stem", "block0", "block1", "block2", "inner", "inner/inner_dense", "head",
    ]
    assert [n.class_name for n in tree.layers][:2] == ["Dense", "Dense"]


def test_shared_layer_has_every_path_and_one_node():
    model = shared()
    tree = fl.LayerTree(model)
    common = [n for n in tree if n.name == "common"]
    assert len(common) == 1
    assert common[0].paths == ["left/common", "right/common"]
    assert common[0].is_shared
    assert [p.path for p in common[0].parents] == ["left", "right"]
    assert len(tree.node(model.get_layer("right")).children) == 2


def test_nodes_know_their_class_and_whether_they_hold_layers():
    tree = fl.LayerTree(nested())
    by_path = {n.path: n for n in tree}
    assert by_path["base"].class_name == "Functional"
    assert by_path["base"].is_container
    assert not by_path["head"].is_container
    assert [v.name for v in by_path["base/stem_bn"].weights] == ["gamma", "beta"]
    assert [v.name for v in by_path["base/stem_bn"].states] == ["moving_mean", "moving_variance"]


def test_functional_children_follow_model_layers_including_input_layer():
    inputs = keras.Input((3,), name="inp")
    base = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs), name="base")
    tree = fl.LayerTree(base)
    assert [c.layer for c in tree.root.children] == base.layers
    assert tree.root.children[0].class_name == "InputLayer"


def test_duplicate_names_in_one_container_get_suffixes():
    class Twice(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="twice")
            self.first = keras.layers.Dense(2, name="same")
            self.second = keras.layers.Dense(2, name="same")

        def call(self, x):
            return self.second(self.first(x))

    model = keras.Sequential([keras.Input((2,)), Twice()])
    paths = [n.path for n in fl.LayerTree(model).layers]
    assert paths == ["twice", "twice/same", "twice/same~2"]


@pytest.mark.slow
def test_applications_model_has_a_path_for_every_layer_of_its_base():
    model = applications()
    tree = fl.LayerTree(model)
    base = model.layers[0]
    assert tree.node(base.layers[-1]).path == f"{base.name}/{base.layers[-1].name}"
    assert len(tree.node(base).children) == len(base.layers)
    assert len(tree) == 1 + len(model.layers) + len(base.layers)
