import math

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.inspect.audit import audited_variables
from model_zoo import nested


def test_audit_watches_frozen_weights_and_inference_states_only():
    model = nested()
    fl.apply(model, fl.Plan().freeze("head").inference("stem_bn"))
    watched = [p for p, _ in audited_variables(model)]
    assert watched == [
        "base/stem_bn/moving_mean", "base/stem_bn/moving_variance", "head/kernel", "head/bias",
    ]


def test_training_mode_batch_norm_statistics_are_not_false_alarms():
    model = nested()
    fl.apply(model, fl.Plan().freeze("head"))
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    model.fit(x, np.zeros((8, 3), "float32"), epochs=2, verbose=0, callbacks=[fl.FreezeAudit()])


@pytest.mark.parametrize("reference", ["disk", "memory", None])
def test_fingerprint_reports_the_largest_absolute_change(reference):
    model = nested()
    fl.apply(model, fl.Plan().freeze("base"))
    fp = fl.fingerprint(model, reference=reference)
    assert fp.changes() == {}
    kernel = model.get_layer("base").get_layer("stem").kernel
    value = keras.ops.convert_to_numpy(kernel.value).copy()
    value[2, 3] -= 0.25
    kernel.assign(value)
    changes = fp.changes()
    assert list(changes) == ["base/stem/kernel"]
    if reference is None:
        assert math.isnan(changes["base/stem/kernel"])
    else:
        assert changes["base/stem/kernel"] == pytest.approx(0.25)
    with pytest.raises(fl.FrozenWeightsChanged, match="base/stem/kernel"):
        fp.verify()
    fp.close()


def test_a_single_bit_flip_is_caught():
    model = nested()
    fl.apply(model, fl.Plan().freeze("**"))
    fp = fl.fingerprint(model, reference=None)
    bias = model.get_layer("head").bias
    bits = keras.ops.convert_to_numpy(bias.value).copy().view(np.int32)
    bits[1] ^= 1
    bias.assign(bits.view(np.float32))
    assert list(fp.changes()) == ["head/bias"]


def test_disk_reference_is_removed_at_the_end_of_training(tmp_path):
    model = nested()
    fl.apply(model, fl.Plan().freeze("base"))
    model.compile(optimizer="adam", loss="mse")
    audit = fl.FreezeAudit()
    model.fit(np.zeros((4, 6), "float32"), np.zeros((4, 3), "float32"), verbose=0, callbacks=[audit])
    assert audit.fingerprint._directory is None


def test_bad_reference_is_refused():
    with pytest.raises(ValueError, match="Expected reference='disk', 'memory' or None. Received: reference='ram'"):
        fl.fingerprint(nested(), reference="ram")


def test_a_sign_flip_at_an_odd_position_is_caught():
    model = nested()
    fl.apply(model, fl.Plan().freeze("**"))
    fp = fl.fingerprint(model, reference=None)
    kernel = model.get_layer("head").kernel
    value = keras.ops.convert_to_numpy(kernel.value).copy()
    value.flat[1] = -value.flat[1]
    kernel.assign(value)
    assert list(fp.changes()) == ["head/kernel"]
