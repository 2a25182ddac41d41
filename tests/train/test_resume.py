"""Checkpoints and resume: a real process killed with SIGKILL, then resumed."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import frostline as fl
from model_zoo import nested
from parity.helpers import SCRIPTS, arrays

SCRIPT = SCRIPTS / "resume_run.py"


def run_script(out, mode, settings="seed"):
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    return subprocess.run([sys.executable, str(SCRIPT), str(out), mode, settings], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["seed", "default"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, settings):
    full = run_script(tmp_path, "full", settings)
    assert full.returncode == 0, full.stderr
    killed = run_script(tmp_path, "kill", settings)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "kill.npz").exists()
    latest = (tmp_path / "ckpt-killed" / "latest").read_text()
    assert latest == "epoch-00004"  # epochs 0-3 done; killed inside epoch 4
    resumed = run_script(tmp_path, "resume", settings)
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs [0, 1, 2, 3, 4, 5]" in resumed.stdout
    assert "{'name': 'top', 'start_epoch': 3, 'epochs': 3}" in resumed.stdout
    with np.load(tmp_path / "full.npz") as a, np.load(tmp_path / "resume.npz") as b:
        assert a.files == b.files
        for key in a.files:  # bit for bit: without a seed, the checkpoint's random states
            np.testing.assert_array_equal(a[key], b[key])


def phases():
    return [fl.Phase("a", epochs=2, plan=fl.Plan().freeze("base")), fl.Phase("b", epochs=1, plan=fl.Plan().unfreeze("base"))]


X, Y = arrays(16)


def test_resume_with_a_different_config_names_the_fields(tmp_path):
    fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=tmp_path, seed=1).fit(X, Y, batch_size=8, verbose=0)
    changed = [fl.Phase("a", epochs=3, plan=fl.Plan().freeze("base")), fl.Phase("b", epochs=1, plan=fl.Plan().unfreeze("base"))]
    run = fl.FineTune(nested(), changed, loss="mse", checkpoint_dir=tmp_path, seed=2)
    with pytest.raises(fl.CheckpointError, match=r"phases\[0\]\.epochs: 2 -> 3; seed: 1 -> 2"):
        run.fit(X, Y, batch_size=8, verbose=0, resume=True)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    run = fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=tmp_path / "none")
    with pytest.raises(fl.CheckpointError, match="No checkpoint to resume from"):
        run.fit(X, Y, verbose=0, resume=True)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        fl.FineTune(nested(), phases(), loss="mse").fit(X, Y, verbose=0, resume=True)


def test_an_interrupted_write_leaves_the_last_checkpoint_intact(tmp_path):
    run = fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=tmp_path, seed=1)
    run.fit(X, Y, batch_size=8, verbose=0)
    assert (tmp_path / "latest").read_text() == "epoch-00003"
    # What a write killed halfway leaves behind: a temporary directory, no pointer change.
    partial = tmp_path / ".epoch-00004.abc"
    partial.mkdir()
    (partial / "model.npz").write_bytes(b"truncated")
    resumed = fl.FineTune(nested(), phases(), loss="mse", checkpoint_dir=tmp_path, seed=1)
    history = resumed.fit(X, Y, batch_size=8, verbose=0, resume=True)
    assert history.epoch == [0, 1, 2]  # nothing left to run; history restored
    assert [p["name"] for p in history.phases] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".epoch-00004.abc", "epoch-00003", "latest"]
