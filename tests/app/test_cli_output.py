"""An output folder that `frostline train` cannot write is refused before anything runs:
one line, exit code 2, nothing written. For a folder of mode 0o555 the command must not
be able to write past the mode, so when the tests run as root, the command runs as root
without the capabilities that let root ignore permissions (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH): a plain user, as far as permission bits go, with the same Python."""

import os
import shutil
import stat
import subprocess
import sys

import pytest
import yaml

# Runs a command with root's permission override (and its override for reading) taken from
# its bounding set, so that the command cannot get them back when it execs Python. (Not a
# preexec_fn: forking a process that runs JAX threads is what JAX warns against.)
WITHOUT_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def frostline_train(config, cwd):
    """`python -m frostline train CONFIG` as a user whom a folder's mode binds."""
    prefix = []
    if os.geteuid() == 0:
        prefix = WITHOUT_OVERRIDE
        works = shutil.which("setpriv") and subprocess.run([*prefix, sys.executable, "-c", "pass"]).returncode == 0
        if not works:
            pytest.skip("running as root, and root's CAP_DAC_OVERRIDE cannot be dropped here (no setpriv, or it was "
                        "refused), so a folder of mode 0o555 does not stop this user's writes")
    return subprocess.run([*prefix, sys.executable, "-m", "frostline", "train", config], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"})


def tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mode) for p in folder.rglob("*"))


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "base.keras").write_bytes(b"")  # the output is checked before the base is read
    (tmp_path / "data.npz").write_bytes(b"")
    config = {"base": {"keras": "base.keras"}, "head": {"classes": 3}, "data": {"npz": "data.npz"},
              "phases": [{"name": "head", "epochs": 1}], "output": "locked/run"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "file.yaml").write_text(yaml.safe_dump(config | {"output": "a_file/run"}))
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o555)
    yield tmp_path
    (tmp_path / "locked").chmod(0o755)


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.slow
def test_read_only_output_parent_is_one_line_exit_2_and_nothing_written(workdir):
    before = tree(workdir)
    line = one_line(frostline_train("config.yaml", workdir))
    locked = workdir / "locked"
    assert line == (f"frostline train: error: config.yaml: output: {str(locked / 'run')!r} cannot be written: "
                    f"{str(locked)!r} is not writable by this user. Write to a folder this user can write to."), line
    assert tree(workdir) == before and stat.S_IMODE(locked.stat().st_mode) == 0o555


@pytest.mark.slow
def test_output_under_a_regular_file_is_one_line_exit_2_and_nothing_written(workdir):
    before = tree(workdir)
    line = one_line(frostline_train("file.yaml", workdir))
    assert line == (f"frostline train: error: file.yaml: output: expected a folder; {str(workdir / 'a_file')!r} on the "
                    f"way to {str(workdir / 'a_file' / 'run')!r} is a file."), line
    assert tree(workdir) == before and (workdir / "a_file").read_text() == "not a folder\n"
