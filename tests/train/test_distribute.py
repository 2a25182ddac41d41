"""FineTune under keras.distribution.DataParallel, on 4 virtual CPU devices.

JAX fixes its device count when it starts, so the runs happen in a fresh process
(tests/scripts/data_parallel_run.py); these tests read what it saved.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import frostline as fl
from parity.helpers import SCRIPTS

SCRIPT = SCRIPTS / "data_parallel_run.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("data_parallel")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(out / "result.json") as f:
        result = json.load(f)

    def weights(name):
        with np.load(out / f"{name}.npz") as data:
            return {k: data[k] for k in data.files}

    return result, weights


def _phase(weights, phase):
    return {k.split("|", 1)[1]: v for k, v in weights.items() if k.startswith(f"{phase}|")}


@pytest.mark.slow
def test_the_runs_used_four_devices(runs):
    result, _ = runs
    assert result["jax_devices"] == 4
    assert result["runs"]["single"]["devices"] == 1
    for name in ("parallel", "parallel_cached", "parallel_disk"):
        assert result["runs"][name]["devices"] == 4
        assert "data parallel over 4 devices" in result["runs"][name]["lines"][0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["parallel", "parallel_cached", "parallel_disk"])
def test_data_parallel_run_ends_where_the_single_device_run_does(runs, name):
    _, weights = runs
    single, parallel = weights("single"), weights(name)
    for phase in (1, 2):
        expected, got = _phase(single, phase), _phase(parallel, phase)
        assert expected.keys() == got.keys()
        for path, value in expected.items():
            np.testing.assert_allclose(got[path], value, rtol=1e-4, atol=1e-6, err_msg=f"phase {phase}: {path}")
    head_before = _phase(single, "initial")["head/kernel"]
    assert not np.allclose(_phase(parallel, 2)["head/kernel"], head_before)  # it trained


@pytest.mark.slow
def test_cached_parallel_phases_used_the_cache(runs):
    result, _ = runs
    cached = [line for line in result["runs"]["parallel_cached"]["lines"] if line.strip().startswith("cache:")]
    assert len(cached) == 2 and all("memory" in line for line in cached)
    on_disk = [line for line in result["runs"]["parallel_disk"]["lines"] if line.strip().startswith("cache:")]
    assert len(on_disk) == 2 and all("disk" in line for line in on_disk)
    plain = [line for line in result["runs"]["parallel"]["lines"] if line.strip().startswith("cache:")]
    assert all("off" in line for line in plain)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["single", "single_cached", "parallel", "parallel_cached", "parallel_disk"])
def test_frozen_variables_are_bit_identical_after_every_phase(runs, name):
    result, weights = runs
    saved = weights(name)
    initial = _phase(saved, "initial")
    frozen = result["runs"][name]["frozen"]
    assert "base/conv1/kernel" in frozen["1"] and "base/conv2/kernel" in frozen["1"]
    assert "base/conv1/kernel" in frozen["2"] and "base/conv2/kernel" not in frozen["2"]
    for phase in ("1", "2"):
        after = _phase(saved, phase)
        for path in frozen[phase]:
            assert np.array_equal(after[path], initial[path]), f"{path} moved in phase {phase}"
    assert not np.array_equal(_phase(saved, 2)["base/conv2/kernel"], initial["base/conv2/kernel"])


@pytest.mark.slow
def test_interrupted_data_parallel_run_resumes_to_the_same_weights(runs):
    _, weights = runs
    uninterrupted, resumed = _phase(weights("parallel_cached"), 2), _phase(weights("resumed"), 2)
    for path, value in uninterrupted.items():
        np.testing.assert_allclose(resumed[path], value, rtol=1e-5, atol=1e-7, err_msg=path)


@pytest.mark.slow
def test_bad_input_under_data_parallel_is_refused_before_training(runs):
    result, _ = runs
    errors = result["errors"]
    assert "Asked for 8 devices; this machine has 4" in errors["too_many_devices"]
    assert "batch_size=10 cannot be split over 4 devices" in errors["batch_not_divisible"]
    assert "8 or 12" in errors["batch_not_divisible"]
    assert "62 samples, so its last batch has 14" in errors["last_batch_not_divisible"]
    assert "The training data has 57 samples, so its last batch has 9" in errors["validation_split_not_divisible"]
    for name in ("batch_not_divisible", "last_batch_not_divisible", "validation_split_not_divisible"):
        assert errors[name + "_wrote"] is False
        assert errors[name + "_weights_kept"] is True
        assert errors[name + "_trainable_kept"] is True


def test_more_devices_than_exist_is_a_clear_error():
    available = len(keras.distribution.list_devices())
    with pytest.raises(ValueError, match=f"Asked for {available + 1} devices; this machine has {available}"):
        fl.data_parallel(available + 1)


@pytest.mark.parametrize("devices", [0, -2, "all", 1.5, []])
def test_data_parallel_rejects_a_bad_device_count(devices):
    with pytest.raises(ValueError, match="Expected devices"):
        fl.data_parallel(devices)


def test_finetune_rejects_something_that_is_not_a_distribution():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(TypeError, match=r"Expected distribution to be keras.distribution.DataParallel"):
        fl.FineTune(model, [fl.Phase("all", epochs=1)], loss="mse", distribution="mirrored")


def test_finetune_rejects_model_parallel():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    mesh = keras.distribution.DeviceMesh((1,), ["model"], keras.distribution.list_devices()[:1])
    layout_map = keras.distribution.LayoutMap(mesh)
    with pytest.raises(ValueError, match="supports keras.distribution.DataParallel"):
        fl.FineTune(model, [fl.Phase("all", epochs=1)], loss="mse",
                    distribution=keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="model"))


@pytest.mark.slow
def test_two_processes_train_as_one_process_on_all_their_devices(tmp_path):
    """Two processes joined by keras.distribution.initialize, 2 devices each, each with
    its own half of the data, end where one process with 4 devices does."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    script = str(SCRIPTS / "multihost_run.py")
    processes = [subprocess.Popen([sys.executable, script, str(tmp_path), str(i), port], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for i in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-4000:]
    reference = subprocess.run([sys.executable, script, str(tmp_path), "reference"], capture_output=True, text=True,
                               env=env, timeout=600)
    assert reference.returncode == 0, reference.stderr[-4000:]
    saved = [dict(np.load(tmp_path / f"{name}.npz")) for name in ("0", "1", "reference")]
    for path, value in saved[2].items():
        np.testing.assert_array_equal(saved[0][path], saved[1][path], err_msg=path)  # one model, two hosts
        np.testing.assert_allclose(saved[0][path], value, rtol=1e-5, atol=1e-7, err_msg=path)
    assert "data parallel over 4 devices" in outputs[0][0]
    assert "the run spans several processes" in outputs[0][0]  # the cache steps aside, saying why
    assert (tmp_path / "checkpoints-shared" / "latest").read_text().strip() == "epoch-00005"
    # Process 0 wrote a checkpoint after each of the 5 epochs; process 1 wrote none.
    assert [(tmp_path / f"{i}-checkpoint-writes.txt").read_text() for i in (0, 1)] == ["5", "0"]
    for i in (0, 1):
        assert "Give each process its own part of the data" in (tmp_path / f"{i}-auto-shard-error.txt").read_text()
