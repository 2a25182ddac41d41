"""`fl.frost_split`: the frozen, deterministic front of a model, and the remainder that
trains on its output."""

import keras
import numpy as np
import pytest

import frostline as fl
from model_zoo import nested, skip_model, subclassed
from parity.helpers import arrays


def test_split_of_a_nested_model_computes_what_the_model_does():
    model = nested()
    fl.apply(model, fl.Plan().freeze("base"))
    split = fl.frost_split(model)
    assert [l.name for l in split.remainder.layers if l.weights] == ["head"]
    x, _ = arrays(4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)),
                               keras.ops.convert_to_numpy(split.remainder(split.frozen(x))), rtol=1e-6)
    assert split.remainder.get_layer("head") is model.get_layer("head")  # shared, not copied


def test_split_cuts_once_where_a_skip_connection_crosses_the_frost_line():
    model = skip_model()
    fl.apply(model, fl.Plan().freeze(["frozen1", "frozen2"]))
    split = fl.frost_split(model)
    assert len(split.cut) == 1 and split.cut[0][1] == (None, 8)


def test_split_refuses_a_subclassed_model_and_a_random_layer_before_the_cut():
    with pytest.raises(fl.NotCacheable, match="subclassed model whose graph cannot be seen"):
        fl.frost_split(subclassed())
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dropout(0.5, name="drop"), keras.layers.Dense(4, name="d"),
                              keras.layers.Dense(2, name="head")])
    fl.apply(model, fl.Plan().freeze("d"))
    with pytest.raises(fl.NotCacheable, match=r"random layers \(drop\) come before the frozen part: Phase\(cache_views=K\)"):
        fl.frost_split(model)  # the random Dropout comes first
    fl.apply(model, fl.Plan().inference("drop"))
    assert [l.name for l in fl.frost_split(model).remainder.layers if l.weights] == ["head"]
