"""`frostline probe` end to end, in real processes: the five files, the train.yaml that
`frostline train` runs, and one-line errors that write nothing."""

import json
import re
import shutil

import keras
import matplotlib.image
import numpy as np
import pytest
import yaml

from frostline.app.config import load_config
from parity.helpers import ROOT, edit, run_frostline

pytestmark = pytest.mark.slow  # each test runs `frostline probe` or `frostline train` in a fresh process

FILES = ["phases.yaml", "probe.json", "probe.md", "probe.png", "train.yaml"]


def make_workdir(folder):
    model = keras.saving.load_model(ROOT / "examples" / "small_cnn.keras")
    model.layers[0].save(folder / "base.keras")
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 16, 16, 1), dtype="float32"), rng.integers(0, 3, 40)
    np.savez(folder / "data.npz", x_train=x[:32], y_train=y[:32], x_val=x[32:], y_val=y[32:])
    np.savez(folder / "train_only.npz", x_train=x, y_train=y)
    return folder


def config(**changes):
    base = {
        "base": {"keras": "base.keras"},
        "head": {"classes": 3},
        "data": {"npz": "data.npz", "batch_size": 8},
        "phases": [{"name": "head", "epochs": 1, "learning_rate": 0.01, "plan": {"rules": [{"freeze": "base"}]}}],
        "probe": {"epochs": 3, "schedule": {"head_epochs": 1, "finetune_epochs": 1}},
        "output": "run",
        "seed": 0,
    }
    return edit(base, changes)


def write(folder, data, name="config.yaml"):
    (folder / name).write_text(yaml.safe_dump(data))
    return folder / name


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One run of `frostline probe` on the small example: (workdir, its result)."""
    workdir = make_workdir(tmp_path_factory.mktemp("probe"))
    result = run_frostline("probe", write(workdir, config()), cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir, result


def test_a_probe_config_needs_no_phases(tmp_path):
    workdir = make_workdir(tmp_path)
    result = run_frostline("probe", write(workdir, config(phases=None)), cwd=workdir)
    assert result.returncode == 0, result.stderr
    written = yaml.safe_load((workdir / "run" / "train.yaml").read_text())
    assert [phase["name"] for phase in written["phases"]][0] == "head"
    # frostline train still asks for them.
    train = run_frostline("train", write(workdir, config(phases=None, output="other"), "train.yaml"), cwd=workdir)
    assert train.returncode == 2 and "phases" in train.stderr and not (workdir / "other").exists()


def test_probe_prints_the_table_and_writes_the_five_files(probed):
    workdir, result = probed
    out = workdir / "run"
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert "cut " in result.stdout and "<- best" in result.stdout
    assert f"wrote {out}: probe.md, probe.png, probe.json, phases.yaml, train.yaml" in result.stdout
    image = matplotlib.image.imread(out / "probe.png")
    assert image.shape[0] > 200 and image.shape[1] > 300
    data = json.loads((out / "probe.json").read_text())
    assert data["train_samples"] == 32 and data["validation_samples"] == 8 and data["epochs"] == 3
    assert [row["cut"] for row in data["rows"]] == re.findall(r"^(\S+)\s+\d+\s+\S+ \(\d+%\)", result.stdout, re.M)
    report = (out / "probe.md").read_text()
    assert f"**Best cut:** `{data['best']}`" in report and "## Schedule" in report


def test_the_printed_best_cut_is_the_best_of_probe_json(probed):
    workdir, result = probed
    best = json.loads((workdir / "run" / "probe.json").read_text())["best"]
    printed = re.search(r"^best cut: (\S+) ", result.stdout, re.M).group(1)
    marked = re.search(r"^(\S+) .*<- best$", result.stdout, re.M).group(1)
    assert printed == marked == best


def test_phases_yaml_is_the_phases_of_a_config_the_train_loader_reads(probed, tmp_path):
    workdir, _ = probed
    phases = yaml.safe_load((workdir / "run" / "phases.yaml").read_text())
    assert list(phases) == ["phases"]
    assert [p["name"] for p in phases["phases"]] == ["head", "finetune"]
    for name in ("base.keras", "data.npz"):
        shutil.copy(workdir / name, tmp_path / name)
    loaded = load_config(write(tmp_path, config(phases=phases["phases"], probe=None)))
    assert [(p.name, p.epochs, p.learning_rate) for p in loaded.phases] == [("head", 1, 0.001), ("finetune", 1, 0.0001)]
    assert loaded.phases[0].plan == {"rules": [{"freeze": "base"}, {"inference": "base"}]}
    train = load_config(workdir / "run" / "train.yaml")  # the same phases, from another folder's paths
    assert train.phases == loaded.phases
    assert train.output == str(workdir / "run" / "train") and train.data.npz == str(workdir / "data.npz")
    assert getattr(train, "probe", None) is None


def test_frostline_train_runs_the_probed_train_yaml(probed, tmp_path):
    workdir, _ = probed
    result = run_frostline("train", workdir / "run" / "train.yaml", "--quiet", cwd=tmp_path)  # from elsewhere
    assert result.returncode == 0, result.stderr
    assert "phase 1/2 'head'" in result.stdout and "phase 2/2 'finetune'" in result.stdout
    assert (workdir / "run" / "train" / "model.keras").is_file()
    assert sorted(p.name for p in (workdir / "run").iterdir()) == sorted([*FILES, "train"])


def test_frostline_train_accepts_the_config_with_a_probe_section(probed):
    workdir, _ = probed
    data = config(output="trained")
    result = run_frostline("train", write(workdir, data, "with_probe.yaml"), "--quiet", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "trained" / "model.keras").is_file()


def test_validation_split_stands_in_for_x_val(tmp_path):
    workdir = make_workdir(tmp_path)
    data = config(**{"data.npz": "train_only.npz", "data.validation_split": 0.25, "probe.cuts": ["base/block2_pool"]})
    result = run_frostline("probe", write(workdir, data), cwd=workdir)
    assert result.returncode == 0, result.stderr
    probe = json.loads((workdir / "run" / "probe.json").read_text())
    assert (probe["train_samples"], probe["validation_samples"]) == (30, 10)
    assert [row["cut"] for row in probe["rows"]] == ["base/block2_pool"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data.npz": "train_only.npz"}, "data: expected validation data to score the probes on"),
        ({"probe.cuts": []}, "probe.cuts: expected auto or a non-empty list of layer selectors"),
        ({"probe.cuts": ["base/block2_pool", "base/block9_pool"]},
         "probe.cuts[1]: Cut 'base/block9_pool' matches no layer. Did you mean 'base/block2_pool'?"),
        ({"probe.epochs": True}, "probe.epochs: Input should be a valid integer; received true, a boolean"),
        ({"probe.epoch": 3}, "probe.epoch: unknown key"),
        ({"probe.schedule.gradual": "yes"}, "probe.schedule.gradual: Input should be a valid boolean"),
        ({"phases": [{"name": "head", "epochs": 1, "plan": [{"freeze": "base/nothing_*"}]}]},
         "phases[0].plan.rules[0]: Rule 1 (freeze base/nothing_*): selector 'base/nothing_*' matched no layer"),
    ],
)
def test_bad_probe_config_is_one_line_exit_2_and_writes_nothing(tmp_path, changes, message):
    workdir = make_workdir(tmp_path)
    before = sorted(p.name for p in workdir.iterdir())
    result = run_frostline("probe", write(workdir, config(**changes)), cwd=workdir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"frostline probe: error: {workdir / 'config.yaml'}: ")
    assert message in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == sorted([*before, "config.yaml"])
