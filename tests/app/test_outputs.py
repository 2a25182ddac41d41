"""What `frostline train` leaves to read: report.md's metrics, the two pictures, the
progress lines in a log, and no Keras warnings on an image folder. One real run."""

import csv
import math
import re

import matplotlib.image
import numpy as np
import pytest
import yaml

from parity.helpers import run_frostline

pytestmark = pytest.mark.slow  # `frostline train` in a fresh process, a keras.applications base


def _image_folder_run(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            pixels = (np.random.default_rng(i + 10 * len(label)).random((32, 32, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    config = {
        "base": {"application": "MobileNetV2", "weights": "none", "input_shape": [32, 32, 3]},
        "head": {"classes": 2},
        "data": {"images": "images", "image_size": [32, 32], "validation_split": 0.25, "batch_size": 4},
        "phases": [
            {"name": "head", "epochs": 3, "learning_rate": 0.001, "plan": {"rules": [{"freeze": "base"}]}},
            # One epoch: a plain fit on the folder's dataset (the cache would read it once anyway).
            {"name": "top", "epochs": 1, "learning_rate": 0.0001,
             "plan": {"rules": [{"unfreeze": "base/block_16_*"}]}},
        ],
        "metrics": ["accuracy", "sparse_categorical_crossentropy"],
        "output": "run",
        "seed": 0,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return run_frostline("train", tmp_path / "config.yaml", cwd=tmp_path)  # stdout is a pipe


def _metric_tables(report: str) -> dict[str, dict[str, tuple[str, str, str]]]:
    """Phase name to metric to (final, best, best epoch) as report.md writes them."""
    tables: dict[str, dict[str, tuple[str, str, str]]] = {}
    phase = None
    for line in report.splitlines():
        if m := re.match(r"### (\S+) \(epochs \d+-\d+\)", line):
            phase = tables.setdefault(m.group(1), {})
        elif phase is not None and (m := re.match(r"\| `(\w+)` \| (\S+) \| (.+?) \| (\S+) \|$", line)):
            phase[m.group(1)] = (m.group(2), m.group(3), m.group(4))
        elif line.startswith("## After training"):
            phase = None
    return tables


def test_train_on_an_image_folder_writes_outputs_worth_reading(tmp_path):
    result = _image_folder_run(tmp_path)
    assert result.returncode == 0, result.stderr
    # The folder's datasets are read with their length known: Keras has nothing to warn about.
    assert "Warning" not in result.stderr and "ran out of data" not in result.stderr, result.stderr
    caches = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("cache:")]
    assert caches[0].startswith("cache: memory,") and "checked to give the same samples on two passes" in caches[0]
    assert caches[1].startswith("cache: off, plain fit"), caches

    # Progress: one plain line per epoch of the run, numbered across phases.
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    progress = [line for line in result.stdout.splitlines() if " · epoch " in line]
    assert [line.split(" · ")[:2] for line in progress] == [
        ["phase 1/2 'head'", "epoch 1/4"], ["phase 1/2 'head'", "epoch 2/4"],
        ["phase 1/2 'head'", "epoch 3/4"], ["phase 2/2 'top'", "epoch 4/4"]]
    assert all(re.search(r" · loss [\d.e-]+ · .* · [\d.]+s · ETA \d+:\d\d$", line) for line in progress), progress

    # report.md: per phase, each metric's final value, best and best epoch, as in history.csv.
    out = tmp_path / "run"
    rows = list(csv.DictReader((out / "history.csv").read_text().splitlines()))
    tables = _metric_tables((out / "report.md").read_text())
    assert list(tables) == ["head", "top"]
    better = {"loss": min, "val_loss": min, "sparse_categorical_crossentropy": min, "val_sparse_categorical_crossentropy": min,
              "accuracy": max, "val_accuracy": max}
    for phase, metrics in tables.items():
        assert set(metrics) == set(better), metrics
        epochs = [(int(r["epoch"]) + 1, r) for r in rows if r["phase"] == phase]
        for name, (final, best, best_epoch) in metrics.items():
            values = [(float(r[name]), e) for e, r in epochs]
            assert math.isclose(float(final), values[-1][0], rel_tol=1e-3), (phase, name)
            value, epoch = better[name](values, key=lambda pair: pair[0])
            assert best == f"{float(f'{value:.4g}'):.4g} ({better[name].__name__})", (phase, name, best)
            first = next(e for v, e in values if v == value)  # the first of equal values, as EarlyStopping
            assert int(best_epoch) == first, (phase, name)

    # Both pictures are landscape; the frost line of a 150-layer base has its blocks collapsed.
    for png, least_width in (("history.png", 1000), ("frostline.png", 900)):
        height, width = matplotlib.image.imread(out / png).shape[:2]
        assert width > height and width >= least_width, (png, width, height)
    assert height < 1000  # 2 phases of ~22 bars, not one row per layer
