"""The `frostline` command on what goes wrong for users: one line on stderr, an exit code
per kind (docs/cli.md#exit-codes), a traceback only when asked for; and a start that needs
no Keras for --help and --version."""

import errno
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import yaml

import frostline as fl
from frostline.app import cli
from frostline.app.failures import describe
from parity.helpers import ROOT, run_frostline

EXAMPLE = ROOT / "examples" / "small_cnn.keras"


def frostline_process(*args, env=None, **kwargs):
    """`python -m frostline ARGS` started on JAX, without waiting for it."""
    merged = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "frostline", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=merged, **kwargs)


def one_line(result, code):
    """The single stderr line of a command that exited with `code`."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def imported_modules(importtime_stderr):
    """The modules a `python -X importtime` run imported, by their full names."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")}


@pytest.fixture
def workdir(tmp_path):
    """A base, data and a config whose first phase runs for minutes, to be interrupted."""
    keras.saving.load_model(EXAMPLE).layers[0].save(tmp_path / "base.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.random((32, 16, 16, 1), dtype="float32"),
             y_train=rng.integers(0, 3, 32), x_val=rng.random((8, 16, 16, 1), dtype="float32"),
             y_val=rng.integers(0, 3, 8))
    config = {
        "base": {"keras": "base.keras"}, "head": {"classes": 3}, "data": {"npz": "data.npz", "batch_size": 8},
        "phases": [{"name": "head", "epochs": 1000, "learning_rate": 0.01, "plan": {"rules": [{"freeze": "base"}]}},
                   {"name": "top", "epochs": 1, "learning_rate": 0.001,
                    "plan": {"rules": [{"unfreeze": "base/block3_*"}]}}],
        "output": "run", "seed": 0,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "copy.yaml").write_text(yaml.safe_dump(config | {"output": "copy"}))
    return tmp_path


def interrupted(*args, cwd, output, after_epoch=0):
    """`frostline ARGS`, sent SIGINT (Ctrl-C) as soon as the checkpoint of an epoch past
    `after_epoch` is in `output`. Returns the finished process, its stdout collected."""
    stdout = []
    with frostline_process(*args, cwd=cwd) as process:
        reader = threading.Thread(target=lambda: stdout.extend(process.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 300
            while process.poll() is None and time.monotonic() < deadline:
                if (output / "checkpoints" / "latest").is_file() and latest_state(output)["epoch_done"] > after_epoch:
                    process.send_signal(signal.SIGINT)
                    break
                time.sleep(0.02)
            stderr = process.stderr.read()
            process.wait(timeout=120)
        finally:
            process.kill()
            reader.join(timeout=10)
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(stdout), stderr)


def latest_state(output):
    """The `state.json` of the checkpoint `latest` names (or {"epoch_done": 0} while the
    first one is being written)."""
    checkpoints = output / "checkpoints"
    try:
        return json.loads((checkpoints / (checkpoints / "latest").read_text().strip() / "state.json").read_text())
    except (OSError, ValueError):
        return {"epoch_done": 0}


def digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_help_on_every_command_and_version_start_without_keras():
    commands = [[], ["inspect"], ["train"], ["demo"], ["bench"], ["bench", "cache"], ["bench", "memory"]]
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "frostline", *command, "--help"],
            capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "jax"}, timeout=300)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert result.stdout.startswith(f"usage: {' '.join(['frostline', *command])} "), result.stdout
        modules = imported_modules(result.stderr)
        assert not {m for m in modules if m.split(".")[0] in ("keras", "jax", "numpy")}, command
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "frostline", "--version"],
                            capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "jaxx"}, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"frostline {fl.__version__} (keras {keras.__version__})"
    assert not {m for m in imported_modules(result.stderr) if m.split(".")[0] == "keras"}
    assert importlib.metadata.version("frostline") == fl.__version__


@pytest.mark.slow
def test_config_mistakes_that_need_no_keras_are_reported_before_keras_starts(workdir):
    base = yaml.safe_load((workdir / "config.yaml").read_text())
    (workdir / "a_file").write_text("")
    mistakes = {  # the YAML, a key, a type, a file, the output folder
        "yaml": "phases: [\n", "key": yaml.safe_dump(base | {"optimiser": "sgd"}),
        "type": yaml.safe_dump(base | {"seed": True}), "file": yaml.safe_dump(base | {"data": {"npz": "no.npz"}}),
        "proc": yaml.safe_dump(base | {"output": "/proc/run"}), "under_file": yaml.safe_dump(base | {"output": "a_file/run"}),
    }
    for name, text in mistakes.items():
        (workdir / f"{name}.yaml").write_text(text)
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "frostline", "train", f"{name}.yaml"],
                                capture_output=True, text=True, cwd=workdir, timeout=300,
                                env={**os.environ, "KERAS_BACKEND": "jax"})
        errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
        assert result.returncode == 2 and len(errors) == 1, (name, result.stderr[-2000:])
        assert errors[0].startswith(f"frostline train: error: {name}.yaml: "), errors[0]
        started = {m for m in imported_modules(result.stderr) if m.split(".")[0] in ("keras", "jax", "numpy")}
        assert not started, (name, sorted(started)[:5])
    assert not (workdir / "run").exists()


@pytest.mark.slow
def test_backend_that_cannot_start_is_one_line_exit_5_and_writes_nothing(workdir):
    for backend, fragment in (("jaxx", "KERAS_BACKEND='jaxx' is not a Keras backend: expected one of jax, "),
                              ("openvino", "KERAS_BACKEND='openvino' but openvino is not installed")):
        line = one_line(run_frostline("train", workdir / "config.yaml", cwd=workdir, env={"KERAS_BACKEND": backend}), 5)
        assert line.startswith(f"frostline train: error: {fragment}"), line
    assert "Did you mean 'jax'?" in line or backend == "openvino"
    assert not (workdir / "run").exists()
    assert "Did you mean 'jax'?" in one_line(run_frostline("inspect", EXAMPLE, env={"KERAS_BACKEND": "jaxx"}), 5)
    # --help needs no backend; --debug, or FROSTLINE_DEBUG=1, shows the traceback, then the line.
    assert run_frostline("inspect", "--help", env={"KERAS_BACKEND": "jaxx"}).returncode == 0
    for args, env in ((["--debug", "inspect", EXAMPLE], {}), (["inspect", EXAMPLE, "--debug"], {}),
                      (["inspect", EXAMPLE], {"FROSTLINE_DEBUG": "1"})):
        result = run_frostline(*args, env={"KERAS_BACKEND": "jaxx", **env})
        assert result.returncode == 5
        assert result.stderr.startswith("Traceback (most recent call last):"), result.stderr
        assert "frostline.errors.BackendUnavailable: KERAS_BACKEND='jaxx'" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("frostline inspect: error: KERAS_BACKEND='jaxx'")


@pytest.mark.slow
def test_ctrl_c_undoes_the_phase_says_where_to_resume_and_resume_continues(workdir):
    result = interrupted("train", "config.yaml", "--quiet", cwd=workdir, output=workdir / "run")
    state = latest_state(workdir / "run")
    assert state["epoch_done"] >= 1
    assert one_line(result, 130) == f"frostline train: interrupted after epoch {state['epoch_done']}; continue with --resume"
    assert sorted(p.name for p in (workdir / "run").iterdir()) == ["checkpoints"]  # no model.keras, no plots

    # A damaged checkpoint: exit 3, one line naming the file, the folder left as it was.
    shutil.copytree(workdir / "run", workdir / "copy")
    weights = workdir / "run" / "checkpoints" / f"epoch-{state['epoch_done']:05d}" / "model.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = digests(workdir / "run")
    line = one_line(run_frostline("train", "config.yaml", "--resume", cwd=workdir), 3)
    assert line.startswith("frostline train: error: config.yaml: The checkpoint file ") and "model.npz' is damaged" in line
    assert digests(workdir / "run") == before

    # The intact copy goes on from where the run was stopped (and stops again at Ctrl-C).
    resumed = interrupted("train", "copy.yaml", "--resume", "--quiet", cwd=workdir, output=workdir / "copy",
                          after_epoch=state["epoch_done"])
    assert resumed.stdout.startswith(f"resuming from {workdir / 'copy' / 'checkpoints'}/epoch-"
                                     f"{state['epoch_done']:05d} after epoch {state['epoch_done']}\n"), resumed.stdout
    again = latest_state(workdir / "copy")
    assert again["epoch_done"] > state["epoch_done"]
    assert one_line(resumed, 130) == f"frostline train: interrupted after epoch {again['epoch_done']}; continue with --resume"
    assert [record[0] for record in again["history"]] == list(range(again["epoch_done"]))


@pytest.mark.slow
def test_full_disk_is_one_line_exit_4(workdir):
    # A file-size limit (ulimit -f, in kB) makes every write past 16 kB fail with EFBIG (Python
    # ignores SIGXFSZ), as a full disk fails with ENOSPC: the first checkpoint cannot be written.
    command = f"ulimit -f 16 && exec {sys.executable} -m frostline train config.yaml --quiet"  # fails at once
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=workdir, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "jax"})
    line = one_line(result, 4)
    assert line.startswith(f"frostline train: error: could not write in {workdir / 'run'}: File too large. "
                           "Raise the file-size limit (ulimit -f), or write to another disk."), line
    assert line.endswith("The run stopped before its first epoch ended; nothing to resume, run it again.")
    assert not (workdir / "run" / "model.keras").exists()


def test_each_kind_of_error_has_its_exit_code():
    full = fl.StorageError(errno.ENOSPC, "Phase 'head' could not write: No space left on device.")
    full.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoints/x.npz")
    cases = [
        (fl.PlanError("Rule 1 (freeze bsae): matched no layer."), 2, "Rule 1 (freeze bsae): matched no layer."),
        (fl.ConfigError("phases[0].epochs: expected an integer"), 2, "phases[0].epochs"),
        (fl.MissingFileError("no such file: 'x.npz'"), 2, "no such file: 'x.npz'"),
        (fl.CheckpointError("No checkpoint to resume from"), 3, "No checkpoint to resume from"),
        (full, 4, "could not write /data/run/checkpoints/x.npz: No space left on device. Free some space"),
        (PermissionError(errno.EACCES, "Permission denied", "out/model.keras"), 4,
         "could not read or write out/model.keras: Permission denied. Write to a folder this user can write to."),
        (fl.BackendUnavailable("KERAS_BACKEND='torch' but torch is not installed."), 5, "KERAS_BACKEND='torch' but"),
        (RuntimeError("boom\nsecond line"), 1, "unexpected RuntimeError: boom second line (run with --debug for"),
    ]
    for error, code, message in cases:
        failure = describe(error)
        assert (failure.code, str(failure)[:len(message)]) == (code, message), error


def test_unexpected_error_is_one_line_and_debug_shows_where(monkeypatch, capsys):
    def broken(args):
        raise KeyError("layer")

    monkeypatch.setattr(cli, "_inspect", broken)
    assert cli.main(["inspect", "m.keras"]) == 1
    err = capsys.readouterr().err
    assert err == "frostline inspect: error: unexpected KeyError: 'layer' (run with --debug for the traceback)\n"
    assert cli.main(["inspect", "m.keras", "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in broken" in err
    assert err.strip().splitlines()[-1].startswith("frostline inspect: error: unexpected KeyError")


@pytest.mark.slow
def test_output_into_a_closed_pipe_is_no_error():
    # `| true` has exited long before the report is printed: the write meets a closed pipe.
    command = f"{sys.executable} -m frostline inspect {EXAMPLE} | true; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "jax"})
    assert (result.stdout, result.stderr) == ("141\n", "")
