"""Checkpoints that are damaged, edited, pointed elsewhere or in use are refused before
anything is restored, and a write killed at any point leaves `latest` naming a complete
checkpoint."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.train import checkpoint
from model_zoo import nested
from parity.helpers import arrays

X, Y = arrays(16)


def phases():
    return [fl.Phase("a", epochs=2, plan=fl.Plan().freeze("base")), fl.Phase("b", epochs=1, plan=fl.Plan().unfreeze("base"))]


class StopAt(keras.callbacks.Callback):
    """Ends the run with an exception as epoch `epoch` begins (its checkpoint is written)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("stopped")


def interrupted_run(directory, *, loss="mse", callbacks=(), stop_at=1, build=nested):
    """A run stopped after `stop_at` epochs, inside phase 'a': resuming applies its plan."""
    run = fl.FineTune(build(), phases(), loss=loss, checkpoint_dir=directory, seed=1)
    with pytest.raises(RuntimeError, match="stopped"):
        run.fit(X, Y, batch_size=8, verbose=0, callbacks=[*callbacks, StopAt(stop_at)])
    return directory / f"epoch-{stop_at:05d}"


def snapshot(model, optimizer):
    return (
        [(layer.name, layer.trainable) for layer in model._flatten_layers()],
        [(v.path, v.trainable, keras.ops.convert_to_numpy(v).copy()) for v in model.variables],
        optimizer.built,
        [keras.ops.convert_to_numpy(v).copy() for v in optimizer.variables],
    )


def assert_same(before, after):
    assert before[0] == after[0]
    assert [(p, t) for p, t, _ in before[1]] == [(p, t) for p, t, _ in after[1]]
    for (_, _, a), (_, _, b) in zip(before[1], after[1]):
        np.testing.assert_array_equal(a, b)
    assert before[2] == after[2]
    assert len(before[3]) == len(after[3])
    for a, b in zip(before[3], after[3]):
        np.testing.assert_array_equal(a, b)


def refused_resume(directory, match, *, loss="mse", model=None, locked=False):
    """Resumes into a fresh model; asserts the CheckpointError and that nothing changed."""
    model = model if model is not None else nested()
    optimizer = keras.optimizers.Adam(1e-3)
    run = fl.FineTune(model, phases(), optimizer=optimizer, loss=loss, checkpoint_dir=directory, seed=1)
    before = snapshot(model, optimizer)
    with pytest.raises(fl.CheckpointError, match=match) as caught:
        run.fit(X, Y, batch_size=8, verbose=0, resume=True)
    assert_same(before, snapshot(model, optimizer))
    assert (directory / checkpoint.LOCK).exists() == locked
    return str(caught.value)


def edit_state(path, change, *, reseal=False):
    state = json.loads((path / "state.json").read_text())
    change(state)
    if reseal:  # as a writer would have: the digests agree with the files again
        for name in checkpoint.FILES:
            state["files"][name].update(sha256=hashlib.sha256((path / name).read_bytes()).hexdigest(),
                                        bytes=(path / name).stat().st_size)
        state["state_sha256"] = hashlib.sha256(checkpoint._canonical(state)).hexdigest()
    (path / "state.json").write_text(json.dumps(state))


def test_state_holds_each_files_sha256_and_a_clean_checkpoint_resumes(tmp_path):
    path = interrupted_run(tmp_path)
    state = json.loads((path / "state.json").read_text())
    for name in checkpoint.FILES:
        assert state["files"][name]["sha256"] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    assert state["files"]["model.npz"]["variables"][-1] == "outer/head/bias"
    history = fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=tmp_path, seed=1).fit(
        X, Y, batch_size=8, verbose=0, resume=True)
    assert history.epoch == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["epoch-00003", "latest"]  # the lock is gone with the run


def test_truncated_model_file_is_refused_and_nothing_changes(tmp_path):
    path = interrupted_run(tmp_path)
    data = (path / "model.npz").read_bytes()
    (path / "model.npz").write_bytes(data[: len(data) // 2])
    message = refused_resume(tmp_path, "model.npz' is damaged")
    assert f"is damaged: it has {len(data) // 2} bytes, state.json says {len(data)}." in message


@pytest.mark.parametrize("name", ["model.npz", "optimizer.npz"])
def test_a_flipped_byte_is_refused_and_nothing_changes(tmp_path, name):
    path = interrupted_run(tmp_path)
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    refused_resume(tmp_path, f"{name}' is damaged: its SHA-256 is not the one in state.json. It was truncated or altered")


@pytest.mark.parametrize(("change", "match"), [
    (lambda s: s.pop("epoch_done"), r"state.json': expected epoch_done to be an integer. Received: epoch_done=.\(missing\)"),
    (lambda s: s.update(phase="0"), r"expected phase to be an integer. Received: phase='0'"),
    (lambda s: s.update(phase="x" * 5000), r"Received: phase='x{199}\.\.\.\. Nothing was restored"),
    (lambda s: s.update(phase_finished=1), r"expected phase_finished to be true or false"),
    (lambda s: s.update(epoch_done=999), r"expected epoch_done to be within the run's epochs: 1 to 2 .*epoch_done=999"),
    (lambda s: s.update(phase=7), r"expected phase to be a phase's number, 0 to 1. Received: phase=7"),
    (lambda s: s.update(history=[[0, {"loss": "low"}]]), r"expected history to be a list of \[epoch"),
    (lambda s: s.update(history=[]), r"expected history to be one record for each of the epochs 0 to 0"),
    (lambda s: s["phases_run"][0].update(start_epoch=5), r"expected phases_run\[0\] to be phase 'a' beginning at"),
    (lambda s: s.update(config=[]), r"expected config to be an object"),
    (lambda s: s.pop("files"), r"expected a field 'files'"),
    (lambda s: s.pop("state_sha256"), r"expected a field 'state_sha256'"),
    (lambda s: s["history"][0][1].update(loss=0.5), r"state.json' was changed after it was written"),
])
def test_an_edited_state_is_refused_naming_the_field(tmp_path, change, match):
    path = interrupted_run(tmp_path)
    edit_state(path, change)
    refused_resume(tmp_path, match)


def test_state_that_is_not_json_or_repeats_a_key_is_refused(tmp_path):
    path = interrupted_run(tmp_path)
    text = (path / "state.json").read_text()
    (path / "state.json").write_text(text[:-10])
    refused_resume(tmp_path, "state.json' cannot be read as JSON")
    (path / "state.json").write_text('{"phase": 0, "phase": 1}')
    refused_resume(tmp_path, "a key appears twice: 'phase'")
    (path / "state.json").write_text("[" * 100_000)
    refused_resume(tmp_path, "state.json' cannot be read as JSON")
    (path / "state.json").write_text("[1]")
    refused_resume(tmp_path, "state.json' should hold a JSON object. Received: a list")


@pytest.mark.parametrize("pointer", ["absolute", "../outside/epoch-00001", "..", "epoch-00001/../../outside/epoch-00001"])
def test_latest_naming_a_path_outside_the_folder_is_refused(tmp_path, pointer):
    folder = tmp_path / "run"
    path = interrupted_run(folder)
    shutil.copytree(folder, tmp_path / "outside")  # a valid checkpoint there
    target = str(tmp_path / "outside" / "epoch-00001") if pointer == "absolute" else pointer
    (folder / "latest").write_text(target)
    refused_resume(folder, "should name a checkpoint directory inside .*a path elsewhere is not followed")
    assert path.exists()


def test_latest_naming_a_link_is_refused(tmp_path):
    folder = tmp_path / "run"
    interrupted_run(folder)
    shutil.copytree(folder, tmp_path / "outside")
    (folder / "elsewhere").symlink_to(tmp_path / "outside" / "epoch-00001")
    (folder / "latest").write_text("elsewhere")
    refused_resume(folder, "names 'elsewhere', which is not a checkpoint directory")


class PoisonHead(keras.callbacks.Callback):
    """A run that diverges: the head's kernel is NaN when epoch 0's checkpoint is written."""

    def on_epoch_end(self, epoch, logs=None):
        kernel = self.model.get_layer("head").kernel
        kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_nan_weights_of_a_diverged_run_are_refused(tmp_path):
    interrupted_run(tmp_path, callbacks=[PoisonHead()])
    refused_resume(tmp_path, r"model.npz' holds non-finite values in variable 'outer/head/kernel' \(v\d+\): 15 NaN, 0 inf")


def bfloat16_model():
    base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, dtype="bfloat16", name="d")], name="base")
    return keras.Sequential([base, keras.layers.Dense(3, dtype="bfloat16", name="head")], name="outer")


def test_a_bfloat16_model_resumes_and_its_nan_weights_are_refused(tmp_path):
    interrupted_run(tmp_path / "clean", build=bfloat16_model)
    history = fl.FineTune(bfloat16_model(), phases(), loss="mse", checkpoint_dir=tmp_path / "clean", seed=1).fit(
        X, Y, batch_size=8, verbose=0, resume=True)
    assert history.epoch == [0, 1, 2]
    interrupted_run(tmp_path / "nan", build=bfloat16_model, callbacks=[PoisonHead()])
    refused_resume(tmp_path / "nan", r"variable 'outer/head/kernel' \(v\d+\): 15 NaN", model=bfloat16_model())


def test_inf_written_into_the_file_is_refused_even_with_matching_digests(tmp_path):
    path = interrupted_run(tmp_path)
    with np.load(path / "optimizer.npz") as data:
        stored = {k: data[k] for k in data.files}
    stored["v3"] = np.full_like(stored["v3"], np.inf)
    np.savez(path / "optimizer.npz", **stored)
    edit_state(path, lambda s: None, reseal=True)
    refused_resume(tmp_path, r"optimizer.npz' holds non-finite values in variable 'adam/.*' \(v3\): 0 NaN, \d+ inf")


def test_a_loss_differing_only_in_from_logits_is_a_configuration_difference(tmp_path):
    loss = keras.losses.CategoricalCrossentropy
    interrupted_run(tmp_path, loss=loss(from_logits=False))
    refused_resume(tmp_path, r"Differing fields \(checkpoint -> now\): loss.config.from_logits: False -> True",
                   loss=loss(from_logits=True))
    refused_resume(tmp_path, r"loss.class: 'keras.src.losses.losses.CategoricalCrossentropy' -> "
                             r"'keras.src.losses.losses.CategoricalHinge'", loss=keras.losses.CategoricalHinge())


def test_a_model_that_does_not_match_is_refused_with_its_plans_undone(tmp_path):
    interrupted_run(tmp_path)
    other = nested()
    wider = keras.Sequential([keras.Input((6,)), other.get_layer("base"), keras.layers.Dense(4, name="head")], name="outer")
    refused_resume(tmp_path, r"The checkpoint's model variable \d+ \('outer/head/kernel'\) has shape \(5, 3\)", model=wider)


def test_a_run_in_a_folder_locked_by_another_run_is_refused_at_once(tmp_path):
    interrupted_run(tmp_path)
    with checkpoint.folder_lock(str(tmp_path)):
        assert (tmp_path / checkpoint.LOCK).read_text() == str(os.getpid())
        model = nested()
        optimizer = keras.optimizers.Adam()
        before = snapshot(model, optimizer)
        for resume in (True, False):
            run = fl.FineTune(model, phases(), optimizer=optimizer, loss="mse", checkpoint_dir=tmp_path, seed=1)
            with pytest.raises(fl.CheckpointError, match=rf"is in use by another run \(process id {os.getpid()}"):
                run.fit(X, Y, batch_size=8, verbose=0, resume=resume)
        assert_same(before, snapshot(model, optimizer))
    assert sorted(os.listdir(tmp_path)) == ["epoch-00001", "latest"]


def test_a_folder_that_cannot_be_locked_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(checkpoint.fcntl, "flock", no_locks)
    run = fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=tmp_path, seed=1)
    with pytest.warns(UserWarning, match=r"cannot be locked \(\[Errno \d+\] No locks available\); this run goes on"):
        assert run.fit(X, Y, batch_size=8, verbose=0).epoch == [0, 1, 2]


HOLD = """
import sys, time
from frostline.train.checkpoint import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_second_process_on_the_folder_gets_a_clear_error(tmp_path):
    interrupted_run(tmp_path)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        message = refused_resume(tmp_path, rf"is in use by another run \(process id {holder.pid}\b", locked=True)
        assert time.monotonic() - started < 10
        assert "give this run another checkpoint_dir" in message
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    history = fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=tmp_path, seed=1).fit(
        X, Y, batch_size=8, verbose=0, resume=True)
    assert history.epoch == [0, 1, 2]


# ---- kill points ----------------------------------------------------------------------------


class Killed(BaseException):
    """What a SIGKILL is to the writer: nothing after it runs, cleanup neither."""


def kill_at(setattr, folder, step, die):
    """Makes the `step`-th rename, replace or tree removal in `folder` call `die()` before
    it happens (every later one too); a removal dies halfway, one file gone."""
    count = [0]
    rename, replace, rmtree = os.rename, os.replace, shutil.rmtree

    def deadly(real, partial=False):
        def call(*args, **kwargs):
            if not str(args[0]).startswith(str(folder)):
                return real(*args, **kwargs)
            count[0] += 1
            if count[0] >= step:
                if partial and count[0] == step and os.path.isdir(args[0]):
                    for root, _, files in os.walk(args[0]):
                        if files:
                            os.remove(os.path.join(root, files[0]))
                            break
                die()
            return real(*args, **kwargs)
        return call

    setattr(checkpoint.os, "rename", deadly(rename))
    setattr(checkpoint.os, "replace", deadly(replace))
    setattr(checkpoint.shutil, "rmtree", deadly(rmtree, partial=True))


def raise_killed():
    raise Killed("killed")


def assert_resumes_from_what_is_left(folder):
    found = checkpoint.verify_checkpoint(*checkpoint.read_latest(str(folder)))
    assert found.state["epoch_done"] == 1
    seed = found.state["config"]["seed"]
    resumed = fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=folder, seed=seed)
    assert resumed.fit(X, Y, batch_size=8, verbose=0, resume=True).epoch == [0, 1, 2]
    assert sorted(os.listdir(folder)) == ["epoch-00003", "latest"]
    return seed


# A fresh run into a folder whose `latest` names epoch-00001: its first write replaces
# that directory. Steps: 1 point latest at the new copy, 2 remove the old epoch-00001,
# 3 point latest at it, refilled; 4, 5 remove the rest; 6 the second write's rename.
@pytest.mark.parametrize("step", range(1, 7))
def test_a_write_killed_at_any_step_leaves_latest_naming_a_complete_checkpoint(tmp_path, monkeypatch, step):
    interrupted_run(tmp_path)
    (tmp_path / "epoch-00007").mkdir()  # a stale one, for the last step to remove
    run = fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=tmp_path, seed=2)
    with monkeypatch.context() as patch:
        kill_at(patch.setattr, tmp_path, step, raise_killed)
        with pytest.raises(Killed):
            run.fit(X, Y, batch_size=8, verbose=0)
    assert_resumes_from_what_is_left(tmp_path)


KILLED_WRITE = """
import os, signal, sys
sys.path[:0] = sys.argv[3:]
import frostline as fl
from test_checkpoint_validation import X, Y, kill_at, nested, phases
kill_at(setattr, sys.argv[1], int(sys.argv[2]), lambda: os.kill(os.getpid(), signal.SIGKILL))
fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=sys.argv[1], seed=2).fit(X, Y, batch_size=8, verbose=0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", [2, 3])  # while the old epoch-00001 goes; before latest names the new one
def test_a_write_killed_by_sigkill_leaves_latest_naming_a_complete_checkpoint(tmp_path, step):
    interrupted_run(tmp_path)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(tmp_path), str(step), here, os.path.dirname(here)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / checkpoint.LOCK).exists()  # a killed run cannot remove it; the next run takes it
    assert assert_resumes_from_what_is_left(tmp_path) == 2
