"""Parity: `fl.apply` on a compiled model that has trained, then a real `fit`."""

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.apply.apply import FlagSnapshot
from model_zoo import applications, nested, sequential, shared
from parity.helpers import STEPS, adam_slots, changed, compiled, data, fit, values


def test_unfreeze_after_fit_takes_effect_and_keeps_adam_state():
    model = compiled(nested())
    fl.apply(model, fl.Plan().freeze("base"))
    fit(model)
    opt = model.optimizer
    head = model.get_layer("head")
    m, v = adam_slots(opt, head.kernel)
    m_before, v_before = keras.ops.convert_to_numpy(m.value).copy(), keras.ops.convert_to_numpy(v.value).copy()
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == STEPS

    fl.apply(model, fl.Plan().unfreeze("base/block5"))
    m2, v2 = adam_slots(opt, head.kernel)
    assert m2 is m and v2 is v  # the head's moments are the ones from before
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(m2.value), m_before)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(v2.value), v_before)
    conv1 = model.get_layer("base").get_layer("block5").get_layer("conv1")
    fresh_m, _ = adam_slots(opt, conv1.kernel)
    assert not np.any(keras.ops.convert_to_numpy(fresh_m.value))  # fresh slots for the unfrozen

    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {
        "base/block5/conv1/kernel", "base/block5/conv1/bias",
        "base/block5/conv2/kernel", "base/block5/conv2/bias",
        "head/kernel", "head/bias",
    }
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 2 * STEPS


def test_freeze_after_fit_keeps_newly_frozen_weights_bit_identical():
    model = compiled(nested())
    fit(model)
    slots_before = len(model.optimizer.variables)
    fl.apply(model, fl.Plan().freeze("base"))
    assert len(model.optimizer.variables) < slots_before  # no memory for frozen weights
    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {"head/kernel", "head/bias"}
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * STEPS


def test_apply_from_a_callback_between_epochs_takes_effect_in_the_next_epoch():
    model = compiled(nested())
    fl.apply(model, fl.Plan().freeze("base"))
    snapshots = []

    class Unfreeze(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(values(self.model))
            if epoch == 0:
                fl.apply(self.model, fl.Plan().unfreeze("stem"))

    fit(model, epochs=2, callbacks=[Unfreeze()])
    first, second = snapshots
    assert "base/stem/kernel" in changed(first, second)
    assert "base/block5/conv1/kernel" not in changed(first, second)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * STEPS


def test_batch_norm_in_inference_mode_trains_gamma_beta_keeps_statistics():
    model = compiled(nested())
    report = fl.apply(model, fl.Plan().freeze("**").unfreeze("stem_bn").inference("stem_bn"))
    assert {r.path: r.mode for r in report.rows}["base/stem_bn"] == "inference"
    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {"base/stem_bn/gamma", "base/stem_bn/beta"}
    fl.apply(model, fl.Plan().inference("stem_bn", enabled=False))
    before = values(model)
    fit(model)
    assert {"base/stem_bn/moving_mean", "base/stem_bn/moving_variance"} <= changed(before, values(model))


def test_freezing_all_but_the_last_layers_of_a_base_like_keras_users():
    base = sequential()
    model = compiled(keras.Sequential([keras.Input((6,)), base, keras.layers.Dense(2, name="head")], name="m"))
    fl.apply(model, fl.Plan().freeze("seq[:-2]"))
    expected_frozen = {l.name for l in base.layers[:-2]}
    assert {l.name for l in base.layers if not l.trainable} == expected_frozen
    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {"seq/d3/kernel", "seq/d3/bias", "head/kernel", "head/bias"}


def test_a_misspelled_name_in_a_list_changes_nothing():
    model = compiled(nested())
    fit(model)
    flags = FlagSnapshot(fl.LayerTree(model))
    n_vars = len(model.optimizer.variables)
    with pytest.raises(fl.PlanError, match=r"'conv3'.*Did you mean"):
        fl.apply(model, fl.Plan().freeze(["stem", "conv1", "conv3"]))
    assert FlagSnapshot(fl.LayerTree(model)) == flags
    assert len(model.optimizer.variables) == n_vars
    before = values(model)
    fit(model)
    assert "base/stem/kernel" in changed(before, values(model))


@pytest.mark.slow
def test_freezing_the_whole_base_of_a_keras_applications_model():
    model = compiled(applications())
    base = model.layers[0]
    fit(model)
    fl.apply(model, fl.Plan().freeze(base.name))
    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {"head/kernel", "head/bias"}


def test_shared_layer_frozen_in_one_model_by_keras_freezes_the_other():
    # What Keras does without a scope, for contrast with the scoped test above.
    model = shared()
    fl.apply(model, fl.Plan().freeze("left"))
    right = model.get_layer("right")
    assert not right.layers[0].trainable


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_learning_rate_multiplier_scales_each_update_exactly(name):
    def head_delta(multiplier):
        keras.utils.set_random_seed(0)
        optimizer = {
            "Adam": lambda: keras.optimizers.Adam(0.01),
            "AdamW": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
            "SGD": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        }[name]()
        model = compiled(nested(), optimizer)
        fl.apply(model, fl.Plan().freeze("base").lr("head", multiplier))
        before = values(model)
        x, y = data(model)
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)  # one step: exactly linear
        after = values(model)
        assert changed(before, after) == {"head/kernel", "head/bias"}
        return after["head/kernel"] - before["head/kernel"]

    np.testing.assert_allclose(head_delta(0.25), 0.25 * head_delta(1.0), rtol=1e-4, atol=1e-7)
