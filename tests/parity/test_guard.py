"""Parity: `fl.FreezeGuard` for flags set by hand, `fl.FreezeAudit` for weights changed
behind frostline's back."""

import keras
import pytest

import frostline as fl
from model_zoo import nested
from parity.helpers import changed, compiled, fit, values


def test_hand_set_flags_take_effect_with_freeze_guard():
    model = compiled(nested())
    fit(model)
    model.get_layer("base").trainable = False
    before = values(model)
    fit(model, callbacks=[fl.FreezeGuard()])
    assert changed(before, values(model)) == {"head/kernel", "head/bias"}
    model.get_layer("base").get_layer("stem").trainable = True
    model.get_layer("base").trainable = True
    for layer in model.get_layer("base").layers:
        layer.trainable = layer.name == "stem"
    before = values(model)
    fit(model, callbacks=[fl.FreezeGuard()])
    assert changed(before, values(model)) == {
        "base/stem/kernel", "base/stem/bias", "head/kernel", "head/bias",
    }


def test_freeze_guard_raise_names_what_changed_and_changes_nothing():
    model = compiled(nested())
    fit(model)
    model.get_layer("head").trainable = False
    before = values(model)
    with pytest.raises(fl.StaleTrainableError, match=r"now frozen: \['head/kernel', 'head/bias'\]") as e:
        fit(model, callbacks=[fl.FreezeGuard(mode="raise")])
    assert e.value.now_frozen == ["head/kernel", "head/bias"]
    assert not changed(before, values(model))
    fit(model, callbacks=[fl.FreezeGuard()])  # and the model still trains afterwards


def test_freeze_audit_catches_a_change_behind_frostlines_back():
    model = compiled(nested())
    fl.apply(model, fl.Plan().freeze("base"))
    stem = model.get_layer("base").get_layer("stem")

    class Tamper(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            stem.bias.assign(stem.bias.value + 0.5)

    audit = fl.FreezeAudit()
    with pytest.raises(fl.FrozenWeightsChanged, match=r"base/stem/bias \(largest absolute change 0\.5\)") as e:
        fit(model, callbacks=[Tamper(), audit])
    assert list(e.value.changes) == ["base/stem/bias"]
    fit(model, callbacks=[fl.FreezeAudit()])  # an honest fit passes
