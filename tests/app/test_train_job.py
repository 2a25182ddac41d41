"""`frostline train` end to end, in real processes, and its config errors."""

import csv

import keras
import matplotlib.image
import numpy as np
import pytest
import yaml

from parity.helpers import ROOT, edit, run_frostline

pytestmark = pytest.mark.slow  # each test runs `frostline train` in fresh processes


def run_cli(*args, cwd, devices=None):
    flags = f"--xla_force_host_platform_device_count={devices}" if devices else None
    return run_frostline(*args, cwd=cwd, env={"XLA_FLAGS": flags})


@pytest.fixture
def workdir(tmp_path):
    model = keras.saving.load_model(ROOT / "examples" / "small_cnn.keras")
    model.layers[0].save(tmp_path / "base.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.random((32, 16, 16, 1), dtype="float32"), y_train=rng.integers(0, 3, 32),
             x_val=rng.random((8, 16, 16, 1), dtype="float32"), y_val=rng.integers(0, 3, 8))
    return tmp_path


def config(**changes):
    base = {
        "base": {"keras": "base.keras"},
        "head": {"classes": 3, "dropout": 0.1},
        "data": {"npz": "data.npz", "batch_size": 8},
        "phases": [
            {"name": "head", "epochs": 2, "learning_rate": 0.01, "plan": {"rules": [{"freeze": "base"}]}},
            {"name": "top", "epochs": 1, "learning_rate": 0.001,
             "plan": {"rules": [{"unfreeze": "base/block3_*"}, {"inference": "type:BatchNormalization"}]}},
        ],
        "output": "run",
        "seed": 0,
    }
    return edit(base, changes)


def write(workdir, data, name="config.yaml"):
    (workdir / name).write_text(yaml.safe_dump(data))
    return workdir / name


def test_train_writes_model_history_report_and_plots(workdir):
    result = run_cli("train", write(workdir, config()), "--quiet", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "phase 1/2 'head'" in result.stdout and "phase 2/2 'top'" in result.stdout
    out = workdir / "run"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.yaml", "frostline.png", "history.csv", "history.png", "model.keras", "report.md",
    ]
    rows = list(csv.DictReader((out / "history.csv").read_text().splitlines()))
    assert [(r["epoch"], r["phase"]) for r in rows] == [("0", "head"), ("1", "head"), ("2", "top")]
    assert "val_loss" in rows[0]
    report = (out / "report.md").read_text()
    assert "phase **head**: epochs 1-2" in report and "**trainable" in report
    for png in ("history.png", "frostline.png"):
        image = matplotlib.image.imread(out / png)
        assert image.shape[0] > 200 and image.shape[1] > 300
    trained = keras.saving.load_model(out / "model.keras")
    assert trained.get_layer("head").trainable
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["data"]["npz"] == str(workdir / "data.npz")


def test_resume_of_a_finished_run_succeeds_and_of_a_changed_config_names_the_change(workdir):
    assert run_cli("train", write(workdir, config()), "--quiet", cwd=workdir).returncode == 0
    again = run_cli("train", write(workdir, config()), "--quiet", "--resume", cwd=workdir)
    assert again.returncode == 0, again.stderr
    changed = run_cli("train", write(workdir, config(**{"phases.1.epochs": 2})), "--quiet", "--resume", cwd=workdir)
    assert changed.returncode == 3  # a checkpoint error (docs/cli.md, Errors)
    assert "phases[1].epochs: 1 -> 2" in changed.stderr


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"optimiser": "adam"}, "optimiser: unknown key"),
        ({"phases.0.epochs": "five"}, "phases[0].epochs: Input should be a valid integer"),
        ({"phases.1.plan": {"rules": [{"unfreeze": "base/block9_*"}]}},
         "phases[1].plan.rules[0]: Rule 1 (unfreeze base/block9_*): selector 'base/block9_*' matched no layer"),
        ({"phases.1.plan": {"rules": [{"unfreez": "base"}]}}, "phases[1].plan: Plan rule 1: unknown rule kind 'unfreez'"),
        ({"data.npz": None, "data.images": "no_such_folder"}, "data.images: folder not found"),
        ({"base.keras": None, "base.application": "MobileNetv2", "base.weights": "none", "base.input_shape": [32, 32, 3]},
         "base.application: unknown keras.applications model 'MobileNetv2'. Did you mean 'MobileNetV2'?"),
        ({"head.classes": 0}, "head.classes: Input should be greater than 0"),
        ({"phases": []}, "phases: Tuple should have at least 1 item"),
        ({"phases.0.early_stopping": {"patiense": 2}}, "phases[0].early_stopping: not an argument of keras.callbacks.EarlyStopping"),
        ({"distribution": {"data_parallel": 2}}, "distribution.data_parallel: Asked for 2 devices; this machine has 1"),
        ({"distribution": {"data_parallel": 0}}, "distribution.data_parallel: expected a positive device count or 'auto'"),
        ({"distribution": {"data_paralel": 2}}, "distribution.data_paralel: unknown key"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(workdir, changes, message):
    result = run_cli("train", write(workdir, config(**changes)), cwd=workdir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0]
    assert not (workdir / "run").exists()


def test_train_from_an_image_folder_with_an_applications_base(workdir):
    from PIL import Image

    for label in ("cat", "dog"):
        (workdir / "images" / label).mkdir(parents=True)
        for i in range(4):
            pixels = (np.random.default_rng(i).random((32, 32, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(workdir / "images" / label / f"{i}.png")
    data = config(**{
        "base.keras": None, "base.application": "MobileNetV2", "base.weights": "none", "base.input_shape": [32, 32, 3],
        "data.npz": None, "data.images": "images", "data.image_size": [32, 32], "head.classes": 2,
        "phases.1.plan": {"rules": [{"unfreeze": "base/block_16_*"}]}, "phases.1.epochs": 2,
    })
    result = run_cli("train", write(workdir, data), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "run" / "model.keras").is_file()
    # The frozen phase caches the folder's dataset (grain without TensorFlow, else tf.data);
    # the phase that unfreezes the top block caches what comes before it.
    caches = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("cache:")]
    assert len(caches) == 2, result.stdout
    for line in caches:
        assert line.startswith("cache: memory,") and "dataset checked to give the same samples on two passes" in line, line


def test_resume_without_a_checkpoint_writes_nothing(workdir):
    result = run_cli("train", write(workdir, config()), "--resume", cwd=workdir)
    assert result.returncode == 3 and "No checkpoint to resume from" in result.stderr
    assert not (workdir / "run").exists()


def test_train_over_four_devices_ends_where_one_device_does(workdir):
    # The same config on one device and over 4 (no dropout: its masks are drawn per device).
    weights = {}
    for name, extra in (("single", {}), ("parallel", {"distribution": {"data_parallel": 4}})):
        path = write(workdir, config(**extra, **{"head.dropout": 0.0, "output": name}), f"{name}.yaml")
        result = run_cli("train", path, "--quiet", cwd=workdir, devices=4)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("data parallel over 4 devices") == (2 if name == "parallel" else 0)
        rows = list(csv.DictReader((workdir / name / "history.csv").read_text().splitlines()))
        assert len(rows) == 3
        model = keras.saving.load_model(workdir / name / "model.keras")
        weights[name] = {v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights}
    assert weights["single"].keys() == weights["parallel"].keys()
    for path, value in weights["single"].items():
        np.testing.assert_allclose(weights["parallel"][path], value, rtol=1e-4, atol=1e-6, err_msg=path)


def test_train_batch_that_devices_cannot_split_writes_nothing(workdir):
    data = config(distribution={"data_parallel": "auto"}, **{"data.batch_size": 6})
    result = run_cli("train", write(workdir, data), cwd=workdir, devices=4)
    assert result.returncode == 2
    assert "data.batch_size: batch_size=6 cannot be split over 4 devices: expected a multiple of 4, e.g. 4 or 8 " \
           "(with distribution.data_parallel: auto)." in result.stderr
    assert not (workdir / "run").exists()
