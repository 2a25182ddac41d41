"""Parity: a change to a layer that another compiled model shares takes effect on it too."""

import gc

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.apply.apply import FlagSnapshot
from parity.helpers import compiled, numpy

X, Y = np.random.default_rng(0).normal(size=(2, 8, 6)).astype("float32")


def two_models(optimizer_b=None):
    common = keras.layers.Dense(4, name="common")
    a = compiled(keras.Sequential([keras.Input((6,)), common, keras.layers.Dense(6, name="a_head")], name="a"))
    b = compiled(keras.Sequential([keras.Input((6,)), common, keras.layers.Dense(6, name="b_head")], name="b"),
                 optimizer_b)
    for model in (a, b):
        model.fit(X, Y, batch_size=4, verbose=0)
    return common, a, b


def fit(model):
    model.fit(X, Y, batch_size=4, verbose=0, shuffle=False)


def test_freezing_a_shared_layer_in_one_model_keeps_the_other_from_training_it():
    common, a, b = two_models()
    fl.apply(a, fl.Plan().freeze("common"))
    kernel, head = numpy(common.kernel), numpy(b.get_layer("b_head").kernel)
    fit(b)  # JAX raised Keras's optimizer_variables error here; TensorFlow trained `common`
    np.testing.assert_array_equal(numpy(common.kernel), kernel)
    assert not np.array_equal(numpy(b.get_layer("b_head").kernel), head)
    assert len(b.optimizer.variables) == 2 + 2 * 2  # iterations, learning rate, moments of b_head
    fit(a)
    np.testing.assert_array_equal(numpy(common.kernel), kernel)


def test_unfreezing_it_again_lets_both_train_it_with_their_state_kept():
    common, a, b = two_models()
    fl.apply(a, fl.Plan().freeze("common"))
    fit(b)
    iterations = int(numpy(b.optimizer.iterations))
    fl.apply(a, fl.Plan().unfreeze("common"))
    kernel = numpy(common.kernel)
    fit(b)
    assert not np.array_equal(numpy(common.kernel), kernel)
    assert int(numpy(b.optimizer.iterations)) == iterations + 2


def test_a_frozen_scope_on_one_model_holds_for_the_other_and_ends_with_it():
    common, a, b = two_models()
    with fl.scoped(a, fl.Plan().freeze("common")):
        kernel = numpy(common.kernel)
        fit(b)
        np.testing.assert_array_equal(numpy(common.kernel), kernel)
    fit(b)
    assert not np.array_equal(numpy(common.kernel), kernel)


def test_sync_after_setting_the_flag_by_hand_syncs_the_other_model():
    common, a, b = two_models()
    common.trainable = False
    fl.sync(a)
    kernel = numpy(common.kernel)
    fit(b)
    np.testing.assert_array_equal(numpy(common.kernel), kernel)


def test_applying_a_plan_to_a_nested_base_syncs_the_compiled_model_around_it():
    base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d1"), keras.layers.Dense(4, name="d2")],
                            name="base")
    model = compiled(keras.Sequential([base, keras.layers.Dense(6, name="head")], name="model"))
    fit(model)
    fl.apply(base, fl.Plan().freeze("d1"))
    kernel = numpy(base.get_layer("d1").kernel)
    fit(model)
    np.testing.assert_array_equal(numpy(base.get_layer("d1").kernel), kernel)


def test_inference_mode_on_a_shared_layer_reaches_the_other_model():
    drop = keras.layers.Dropout(0.5, name="drop")
    a = compiled(keras.Sequential([keras.Input((6,)), drop, keras.layers.Dense(6, name="a_head")], name="a"))
    b = compiled(keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, name="b_in"), drop,
                                   keras.layers.Dense(6, name="b_head")], name="b"))
    fit(a)
    fit(b)  # traced with dropout on
    fl.apply(a, fl.Plan().inference("drop"))
    # With dropout forced off, b's training loss is its evaluation loss on the same batch
    # before the step: fit one step at learning rate 0 and compare.
    b.optimizer.learning_rate.assign(0.0)
    logs = b.fit(X[:4], Y[:4], batch_size=4, verbose=0, shuffle=False).history
    np.testing.assert_allclose(logs["loss"][0], b.evaluate(X[:4], Y[:4], verbose=0), rtol=1e-5)


def test_an_other_model_that_cannot_be_synced_refuses_the_change_and_changes_nothing():
    class Unconfigurable(keras.optimizers.SGD):
        def get_config(self):
            raise RuntimeError("no config")

    common, a, b = two_models(Unconfigurable(0.01))
    flags = FlagSnapshot(fl.LayerTree(a))
    a_slots, b_slots = list(a.optimizer.variables), list(b.optimizer.variables)
    with pytest.raises(fl.SharedLayerError, match="'b' is compiled and shares layers with 'a' \\(common\\)") as info:
        fl.apply(a, fl.Plan().freeze("common"))
    assert info.value.models == ["b"]
    assert FlagSnapshot(fl.LayerTree(a)) == flags
    assert [id(v) for v in a.optimizer.variables] == [id(v) for v in a_slots]
    assert [id(v) for v in b.optimizer.variables] == [id(v) for v in b_slots]
    kernel = numpy(common.kernel)
    fit(a)
    fit(b)
    assert not np.array_equal(numpy(common.kernel), kernel)


def test_a_compiled_model_no_longer_referenced_is_not_in_the_way():
    class Unconfigurable(keras.optimizers.SGD):
        def get_config(self):
            raise RuntimeError("no config")

    common, a, b = two_models(Unconfigurable(0.01))
    del b
    gc.disable()  # the cycles that keep it alive are collected by frostline, not before
    try:
        fl.apply(a, fl.Plan().freeze("common"))
    finally:
        gc.enable()
    assert not common.trainable
