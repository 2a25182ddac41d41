"""Parity: the freeze audit holds each phase to its own plan wherever it is attached, its
digest is passed by no small change, and it watches every dtype."""

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.inspect import audit
from model_zoo import nested
from parity.helpers import arrays, changed, numpy, values


class _Doubles(keras.callbacks.Callback):
    """Doubles a kernel behind the plan's back after every epoch (before the run's
    callbacks see the epoch end: a phase's callbacks come first)."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_end(self, epoch, logs=None):
        self.variable.assign(self.variable.value * 2.0)


def _run(model, phases, callbacks):
    x, y = arrays(16)
    run = fl.FineTune(model, phases, optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return run.fit(x, y, batch_size=8, verbose=0, shuffle=False, callbacks=callbacks)


def test_an_audit_for_the_whole_run_catches_a_kernel_frozen_by_the_first_phase_moving():
    model = nested()
    stem = model.get_layer("base").get_layer("stem")
    phases = [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache=False,
                       callbacks=[_Doubles(stem.kernel)])]
    with pytest.raises(fl.FrozenWeightsChanged, match="base/stem/kernel"):
        _run(model, phases, callbacks=[fl.FreezeAudit()])


def test_an_audit_for_the_whole_run_lets_an_honest_second_phase_train_what_it_unfroze():
    model = nested()
    phases = [fl.Phase("head", epochs=1, plan=fl.Plan().freeze("base")),
              fl.Phase("top", epochs=2, plan=fl.Plan().unfreeze("base/block5/conv2"))]
    before = values(model)
    _run(model, phases, callbacks=[fl.FreezeAudit(reference="memory")])
    moved = changed(before, values(model))
    assert {"base/block5/conv2/kernel", "head/kernel"} <= moved
    assert not moved & {"base/stem/kernel", "base/block5/conv1/kernel"}


def test_an_audit_for_the_whole_run_catches_what_the_second_phase_froze_moving():
    model = nested()
    head = model.get_layer("head")
    phases = [fl.Phase("all", epochs=1, cache=False),
              fl.Phase("frozen head", epochs=1, plan=fl.Plan().freeze("head"), cache=False,
                       callbacks=[_Doubles(head.kernel)])]
    with pytest.raises(fl.FrozenWeightsChanged, match="head/kernel"):
        _run(model, phases, callbacks=[fl.FreezeAudit()])


def _linear_attack(variable) -> None:
    """Adds (2**22, -2**23, 2**22) to three consecutive elements' bit patterns: a change a
    linear checksum with weights in arithmetic progression cannot see."""
    bits = numpy(variable).reshape(-1).view(np.int32)
    bits[1] += 2**22
    bits[2] -= 2**23
    bits[3] += 2**22
    variable.assign(bits.view(np.float32).reshape(variable.shape))


def test_the_digest_sees_a_change_crafted_against_a_linear_checksum():
    model = nested()
    fl.apply(model, fl.Plan().freeze("**"))
    fp = fl.fingerprint(model, reference=None)
    kernel = model.get_layer("head").kernel
    _linear_attack(kernel)
    assert list(fp.changes()) == ["head/kernel"]


def test_the_on_device_digest_sees_the_same_change():
    # The digest used for variables on an accelerator, run here on the CPU.
    variable = keras.Variable(np.random.default_rng(0).normal(size=(4, 5)).astype("float32"))
    digest, keys = audit._digest_function(), keras.ops.convert_to_tensor(audit._keys())
    before = keras.ops.convert_to_numpy(digest(variable.value, keys))
    assert np.array_equal(before, keras.ops.convert_to_numpy(digest(variable.value, keys)))
    _linear_attack(variable)
    assert not np.array_equal(before, keras.ops.convert_to_numpy(digest(variable.value, keys)))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "int8", "uint8", "bool"])
@pytest.mark.parametrize("reference", ["disk", "memory"])
def test_a_change_of_any_dtype_is_caught_and_measured(dtype, reference):
    start = np.arange(12).reshape(3, 4) % 3
    variable = keras.Variable(start, dtype=dtype, trainable=False)
    fp = fl.Fingerprint([("v", variable)], reference=reference)
    assert fp.changes() == {}
    new = start.copy()
    new[1, 1] = 0 if dtype == "bool" else 4  # from 2 (True for bool)
    variable.assign(keras.ops.cast(new, dtype))
    with pytest.raises(fl.FrozenWeightsChanged) as caught:
        fp.verify()
    assert caught.value.changes == {"v": 1.0 if dtype == "bool" else 2.0}
    fp.close()
