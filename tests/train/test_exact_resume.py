"""Exact resume by default: the global random states a checkpoint holds, checked on
reading, put back on resume; warnings where the data's order cannot be put back."""

import hashlib
import json

import keras
import numpy as np
import pytest

import frostline as fl
import parity.test_exact_resume as scenario
from frostline.train import checkpoint
from frostline.cache.policy import FitInputs
from frostline.train.randomness import capture_random_state, inexact_inputs, restore_random_state


@pytest.mark.parametrize("after", [1, 5])
def test_a_run_stopped_in_either_phase_resumes_exactly(after, tmp_path):
    scenario.assert_same(*scenario.stopped_and_resumed("dropout", tmp_path, "auto", after=after))


def test_a_stopped_run_with_a_disk_cache_resumes_exactly(tmp_path):
    scenario.assert_same(*scenario.stopped_and_resumed("dropout", tmp_path, "disk"))


def stopped(tmp_path, after=4):
    with pytest.raises(RuntimeError, match="stopped"):
        scenario.run("dropout", tmp_path, callbacks=[scenario.Stop(after)])
    return tmp_path / f"epoch-{after:05d}"


def edit_state(path, change):
    state = json.loads((path / "state.json").read_text())
    change(state)
    state["state_sha256"] = hashlib.sha256(checkpoint._canonical(state)).hexdigest()
    (path / "state.json").write_text(json.dumps(state))


def test_checkpoint_holds_the_global_random_states_at_the_epochs_end(tmp_path):
    seen = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen[epoch] = capture_random_state()

    scenario.run("dropout", tmp_path, callbacks=[Keep()])
    state = json.loads((tmp_path / "epoch-00006" / "state.json").read_text())
    assert sorted(state["random_state"]) == ["numpy", "python"]
    earlier = tmp_path / "again"
    stopped(earlier, after=2)
    saved = json.loads((earlier / "epoch-00002" / "state.json").read_text())["random_state"]
    assert saved == seen[2]  # nothing draws between an epoch's end and the next one's begin


def test_restoring_a_captured_state_repeats_every_generator():
    import random

    state = capture_random_state()
    first = (random.random(), np.random.permutation(10).tolist(), np.random.normal())
    restore_random_state(json.loads(json.dumps(state)))
    assert (random.random(), np.random.permutation(10).tolist(), np.random.normal()) == first


@pytest.mark.parametrize("field, value, expected", [
    ("numpy", ["MT19937", [1, 2, 3], 0, 0, 0.0], "numpy: ['MT19937', [624 integers]"),
    ("python", "abc", "python: [version, [625 integers], gauss or null]"),
    ("python", [3, [0] * 625, "x"], "python: [version, [625 integers], gauss or null]"),
])
def test_a_random_state_of_the_wrong_form_is_refused_before_anything_changes(field, value, expected, tmp_path):
    path = stopped(tmp_path)
    edit_state(path, lambda state: state["random_state"].__setitem__(field, value))
    model = scenario.build("dropout")
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.variables]
    numpy_state = np.random.get_state()[1].copy()
    run = fl.FineTune(model, scenario.phases(False), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      checkpoint_dir=tmp_path)
    with pytest.raises(fl.CheckpointError, match="expected random_state to be") as caught:
        run.fit(*scenario.data("dropout"), batch_size=8, verbose=0, resume=True)
    assert expected in str(caught.value) and "Nothing was restored" in str(caught.value)
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(v)) for a, v in zip(before, model.variables))
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)


def test_a_checkpoint_without_random_state_resumes_with_a_warning(tmp_path):
    path = stopped(tmp_path)
    edit_state(path, lambda state: state.pop("random_state"))
    with pytest.warns(UserWarning, match="the checkpoint has no random_state") as caught:
        _, history = scenario.run("dropout", tmp_path, resume=True)
    ours = [w for w in caught if "no random_state" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == scenario.__file__  # once, where FineTune.fit was called
    assert history.epoch == [0, 1, 2, 3, 4, 5]


def inputs(x, **fit_kwargs):
    return FitInputs(x, np.zeros(8), fit_kwargs=fit_kwargs)


def test_inputs_whose_order_is_not_in_the_checkpoint_are_named():
    x = np.zeros((8, 2), "float32")
    # NumPy's or torch's generator, which the checkpoint holds; on TensorFlow, frostline's keyed order.
    assert inexact_inputs(inputs(x)) is None
    assert inexact_inputs(inputs(x, shuffle=False)) is None
    # Only where Keras's own tf.data shuffle still draws the order.
    for kwargs in ({"shuffle": "batch"}, {"steps_per_epoch": 2}):
        assert (inexact_inputs(inputs(x, **kwargs)) is None) == (keras.backend.backend() != "tensorflow")
    assert inexact_inputs(inputs(keras.utils.PyDataset())) is None  # its own on_epoch_end draws from NumPy
    assert "generator" in inexact_inputs(inputs(v for v in [x]))


def test_a_tf_data_pipeline_is_not_named():
    tf = pytest.importorskip("tensorflow")
    x = np.zeros((8, 2), "float32")
    assert inexact_inputs(inputs(tf.data.Dataset.from_tensor_slices(x).shuffle(8).batch(2))) is None
