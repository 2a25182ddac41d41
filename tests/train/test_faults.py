"""A phase stopped part way (an exception in a callback, Ctrl-C, a full disk) is undone:
flags, modes, learning rate and optimizer as before the phase, its files removed, the
error said plainly."""

import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.apply.apply import FlagSnapshot
from model_zoo import nested
from parity.helpers import ROOT, arrays

X, Y = arrays(16)


class StopIn(keras.callbacks.Callback):
    """Raises `error` at the second batch of epoch `epoch` (numbered across phases)."""

    def __init__(self, epoch, error):
        super().__init__()
        self.epoch, self.error, self.current = epoch, error, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            if self.error == "SIGINT":
                signal.raise_signal(signal.SIGINT)  # Python's own handler raises KeyboardInterrupt
            raise self.error


class Remember(fl.FineTune):
    """Keeps what the model looked like as each phase ended."""

    def on_phase_end(self, phase, info):
        self.after = dict(getattr(self, "after", {}))
        self.after[phase.name] = (FlagSnapshot(fl.LayerTree(self.model)), [id(v) for v in self.optimizer.variables],
                                  float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)))


def two_phases():
    return [
        fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base").inference("base"), learning_rate=1e-2),
        fl.Phase("all", epochs=2, plan=fl.Plan().unfreeze("base"), learning_rate=1e-3),
    ]


def assert_as_after_head(run):
    flags, variables, rate = run.after["head"]
    assert FlagSnapshot(fl.LayerTree(run.model)) == flags
    assert [id(v) for v in run.optimizer.variables] == variables
    assert float(keras.ops.convert_to_numpy(run.optimizer.learning_rate)) == pytest.approx(rate)
    assert fl.applied_plan(run.model) == fl.Plan().freeze("base").inference("base")


@pytest.mark.parametrize("error", [ValueError("a callback failed"), "SIGINT"], ids=["callback", "ctrl-c"])
def test_a_phase_stopped_in_its_second_epoch_is_undone_and_the_error_says_so(tmp_path, error):
    run = Remember(nested(), two_phases(), loss="mse", checkpoint_dir=tmp_path)
    expected = KeyboardInterrupt if error == "SIGINT" else ValueError
    with pytest.raises(expected) as info:
        run.fit(X, Y, batch_size=4, verbose=0, shuffle=False, callbacks=[StopIn(3, error)])
    note = " ".join(getattr(info.value, "__notes__", []))
    assert "phase 'all' was stopped and undone" in note
    assert f"The last checkpoint in {tmp_path} is intact" in note
    assert_as_after_head(run)
    # The model still trains as the head phase left it, and the run resumes.
    base = run.model.get_layer("base")
    kernel = keras.ops.convert_to_numpy(base.weights[0]).copy()
    run.model.fit(X, Y, batch_size=4, verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(base.weights[0]), kernel)
    history = run.fit(X, Y, batch_size=4, verbose=0, shuffle=False, resume=True)
    assert history.epoch == [0, 1, 2, 3]


def test_a_phase_stopped_in_its_first_epoch_leaves_the_optimizer_as_the_phase_found_it():
    model = nested()
    run = Remember(model, two_phases(), loss="mse")
    with pytest.raises(ValueError):
        run.fit(X, Y, batch_size=4, verbose=0, callbacks=[StopIn(2, ValueError("no"))])
    assert_as_after_head(run)


FULL_DISK = """
import os, resource, signal, sys
import numpy as np, keras, frostline as fl
from model_zoo import nested
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
from frostline.apply.apply import FlagSnapshot
class Keep(fl.FineTune):
    def on_phase_end(self, phase, info):
        self.after_head = FlagSnapshot(fl.LayerTree(self.model))
model = nested()
run = Keep(model, [
    fl.Phase("head", epochs=1, plan=fl.Plan().freeze("base")),
    fl.Phase("tail", epochs=2, plan=fl.Plan().inference("base"), cache="disk"),
], loss="mse", cache_dir=sys.argv[1])
x = np.random.default_rng(0).normal(size=(4096, 6)).astype("float32")
y = np.zeros((4096, 3), "float32")
try:
    run.fit(x, y, batch_size=64, verbose=0)
except fl.StorageError as e:
    print("errno", e.errno, "|", e)
    print("flags kept", FlagSnapshot(fl.LayerTree(model)) == run.after_head)
"""


def test_a_full_disk_under_a_disk_cache_is_a_storage_error_with_its_files_removed(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT / 'src'}"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(FULL_DISK), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("errno 27 |"), done.stdout  # EFBIG, as ENOSPC would be 28
    assert "Phase 'tail' could not write" in lines[0] and "File too large" in lines[0]
    assert "Its partial files were removed" in lines[0] and "Free some space" in lines[0]
    assert lines[1] == "flags kept True"
    assert os.listdir(tmp_path) == []


def test_a_cache_dir_that_is_a_file_is_a_storage_error_that_says_which_folder_to_give(tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    model = nested()
    run = fl.FineTune(model, [fl.Phase("tail", epochs=2, plan=fl.Plan().freeze("base"), cache="disk")], loss="mse",
                      cache_dir=not_a_folder)
    flags = FlagSnapshot(fl.LayerTree(model))
    with pytest.raises(fl.StorageError, match=r"Phase 'tail' could not write .*a folder this process can write to"):
        run.fit(X, Y, batch_size=4, verbose=0)
    assert FlagSnapshot(fl.LayerTree(model)) == flags
    assert not_a_folder.read_text() == ""


def test_a_first_phase_that_stops_leaves_the_model_compiled_as_before_fit():
    model = nested()
    own = keras.optimizers.SGD(0.5)
    model.compile(optimizer=own, loss="mae")
    model.fit(X, Y, batch_size=4, verbose=0)
    flags, slots = FlagSnapshot(fl.LayerTree(model)), [id(v) for v in own.variables]
    run = fl.FineTune(model, two_phases(), loss="mse")
    with pytest.raises(ValueError):
        run.fit(X, Y, batch_size=4, verbose=0, callbacks=[StopIn(1, ValueError("no"))])
    assert model.optimizer is own and [id(v) for v in own.variables] == slots
    assert FlagSnapshot(fl.LayerTree(model)) == flags
    # It trains as the user compiled it: SGD on the mean absolute error, every layer.
    base = model.get_layer("base")
    kernel = keras.ops.convert_to_numpy(base.weights[0]).copy()
    history = model.fit(X, Y, batch_size=4, verbose=0)
    assert model.optimizer is own and "loss" in history.history
    loss = float(keras.ops.convert_to_numpy(keras.ops.mean(keras.ops.abs(model.predict(X, verbose=0) - Y))))
    assert model.evaluate(X, Y, verbose=0) == pytest.approx(loss, rel=1e-5)
    assert not np.array_equal(keras.ops.convert_to_numpy(base.weights[0]), kernel)


def test_a_first_phase_that_stops_leaves_an_uncompiled_model_uncompiled():
    model = nested()
    run = fl.FineTune(model, two_phases(), loss="mse")
    with pytest.raises(KeyboardInterrupt):
        run.fit(X, Y, batch_size=4, verbose=0, callbacks=[StopIn(0, "SIGINT")])
    assert not model.compiled and not hasattr(model, "optimizer")  # as a model never compiled
    with pytest.raises(ValueError, match="compile"):
        model.fit(X, Y, verbose=0)
    history = run.fit(X, Y, batch_size=4, verbose=0)  # the same run can start again
    assert history.epoch == [0, 1, 2, 3] and model.optimizer is run.optimizer
