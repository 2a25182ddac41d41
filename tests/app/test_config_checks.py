"""Mistakes in a `frostline train` configuration are refused before anything trains or
is written: in process for each mistake, and once through the command."""

import os
import re
import shutil

import keras
import numpy as np
import pytest
import yaml
from PIL import Image

from frostline.app.config import load_config
from frostline.app.train_job import run_training
from frostline.errors import ConfigError
from parity.helpers import ROOT, edit, run_frostline

DOCS = (ROOT / "docs" / "cli.md").read_text()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    keras.saving.load_model(ROOT / "examples" / "small_cnn.keras").layers[0].save(work / "base.keras")  # 16x16x1
    rng = np.random.default_rng(0)
    x = lambda n, size=16: rng.random((n, size, size, 1), dtype="float32")  # noqa: E731
    np.savez(work / "data.npz", x_train=x(16), y_train=np.arange(16) % 3, x_val=x(4), y_val=np.arange(4) % 3)
    np.savez(work / "labels6.npz", x_train=x(12), y_train=np.arange(12) % 6)
    np.savez(work / "one_label.npz", x_train=x(12), y_train=np.zeros(12, int))
    np.savez(work / "small.npz", x_train=x(12, 8), y_train=np.arange(12) % 3)
    np.savez(work / "short.npz", x_train=x(12), y_train=np.arange(10) % 3)
    objects = np.empty(3, dtype=object)
    objects[:] = [x(1)[0], x(1)[0], x(1)[0]]
    np.savez(work / "objects.npz", x_train=objects, y_train=np.arange(3))
    np.save(work / "data.npy", x(4))
    (work / "dir.keras").mkdir()
    (work / "empty").mkdir()
    for name, classes, channels in (("one", "a", 1), ("three", "abc", 1), ("rgb", "ab", 3)):
        for c in classes:
            (work / name / c).mkdir(parents=True)
            pixels = (rng.random((16, 16, channels)) * 255).astype("uint8")
            Image.fromarray(pixels.squeeze()).save(work / name / c / "0.png")
    return work


def config(**changes):
    data = {
        "base": {"keras": "base.keras"},
        "head": {"classes": 3},
        "data": {"npz": "data.npz", "batch_size": 4},
        "phases": [{"name": "head", "epochs": 1, "plan": {"rules": [{"freeze": "base"}]}},
                   {"name": "top", "epochs": 1, "plan": {"rules": [{"unfreeze": "base/block3_*"}]}}],
        "output": "run",
    }
    return yaml.safe_dump(edit(data, changes))


IMAGES = {"data.npz": None, "data.images": "three"}
# (mistake as docs/cli.md names it, the config's text, the start of the message)
MISTAKES = [
    ("`epochs: true`", config(**{"phases.0.epochs": True}), "phases[0].epochs: Input should be a valid integer"),
    ("`output:` twice", config() + "output: again\n", "malformed YAML at line"),
    ("invalid UTF-8", config().encode() + b"# \xff\n", "config: expected UTF-8 text"),
    ("`learning_rate: .inf`", config(**{"phases.0.learning_rate": float("inf")}), "phases[0].learning_rate: Input should be a finite"),
    ("`seed: -1`", config(seed=-1), "seed: Input should be greater than or equal to 0"),
    ("`units: [0]`", config(**{"head.units": [0]}), "head.units[0]: Input should be greater than 0"),
    ("two phases named `head`", config(**{"phases.1.name": "head"}), "phases[1].name: expected each phase"),
    ('`output: ""`', config(output=""), "output: expected the output folder"),
    ("`output` is the config file", config(output="config.yaml"), "output: expected a folder to write the run into"),
    ("`output` inside /proc", config(output="/proc/run"), "output: expected a folder of your own"),
    ("a loss typo", config(loss="sparse_categorical_crossentropyy"), "loss: expected a Keras loss name"),
    ("a metric typo (`acuracy`)", config(metrics=["acuracy"]), "metrics[0]: expected a Keras metric name"),
    ("an activation typo", config(**{"head.activation": "rellu"}), "head.activation: expected a Keras activation"),
    ("an optimizer typo", config(optimizer="adamm"), "optimizer: expected a Keras optimizer name"),
    ("an EarlyStopping `monitor` that is not logged", config(**{"phases.0.early_stopping": {"monitor": "val_acc"}}),
     "phases[0].early_stopping.monitor: expected a metric the run logs"),
    ("an image folder with one class", config(**{**IMAGES, "data.images": "one"}), "data.images: expected at least two"),
    ("`classes: 2` with three class folders", config(**IMAGES, **{"head.classes": 2}), "data.images: '"),
    ("an empty image folder", config(**{**IMAGES, "data.images": "empty"}), "data.images: expected one subfolder"),
    ("`.npz` labels 0-5 with `classes: 3`", config(**{"data.npz": "labels6.npz"}), "data.npz: y_train holds labels 0 to 5"),
    ("one label only", config(**{"data.npz": "one_label.npz"}), "data.npz: expected at least two classes"),
    ("x and y of different lengths", config(**{"data.npz": "short.npz"}), "data.npz: expected one label per sample"),
    ("a `.npy` file as `npz`", config(**{"data.npz": "data.npy"}), "data.npz: expected a .npz archive"),
    ("object arrays", config(**{"data.npz": "objects.npz"}), "data.npz: expected numeric arrays"),
    ("`base.keras` is a directory", config(**{"base.keras": "dir.keras"}), "base.keras: expected a file, received a directory"),
    ("RGB images, a 1-channel base", config(**{**IMAGES, "data.images": "rgb", "head.classes": 2}),
     "data.images: the base takes images with 1 channel"),
    ("`.npz` images the base cannot take", config(**{"data.npz": "small.npz"}), "data.npz: the base takes samples"),
    ("`image_size` other than the base's", config(**IMAGES, **{"data.image_size": [32, 32], "data.color_mode": "grayscale"}),
     "data.image_size: the base takes images of 16x16"),
    ("a phase whose plan freezes everything", config(**{"phases.1.plan": {"rules": [{"freeze": "**"}]}}),
     "phases[1].plan: phase 'top' would train nothing"),
    ("`cache: memroy`", config(**{"phases.0.cache": "memroy"}), "phases[0].cache: expected auto, memory, disk or false"),
    ("`cache_views: 0`", config(**{"phases.0.cache_views": 0}), "phases[0].cache_views: Input should be greater than 0"),
    ("`cache_views` with `cache: false`", config(**{"phases.0.cache": False, "phases.0.cache_views": 2}),
     "phases[0].cache_views: 2 asks for cached views"),
    ("`cache_views` with nothing random", config(**{"phases.0.cache_views": 2}), "phases[0].cache_views: Phase 'head'"),
    ("`cache: memory` where it cannot apply", config(**{"phases.0.cache": "memory"}),
     "phases[0].cache: phase 'head' asks for cache: memory, which cannot apply"),
]


def refusal(folder, text):
    """The ConfigError the in-process check raises for a config, with the folder written as /tmp/work."""
    path = folder / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    shutil.rmtree(folder / "run", ignore_errors=True)
    with pytest.raises(ConfigError) as caught:
        run_training(load_config(path))
    assert not (folder / "run").exists() and path.read_bytes() == (text if isinstance(text, bytes) else text.encode())
    return str(caught.value).replace(str(folder), "/tmp/work")


@pytest.mark.parametrize("mistake, text, start", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_refused_before_training_and_docs_show_its_message(folder, mistake, text, start):
    message = refusal(folder, text)
    assert message.startswith(start), message
    assert f"| {mistake} | `{message}` |" in DOCS, f"docs/cli.md lacks the row: | {mistake} | `{message}` |"


def test_default_image_size_is_the_base_input_size(folder):
    from frostline.app.train_job import build_model, load_data

    path = folder / "config.yaml"
    path.write_text(config(**IMAGES, **{"data.color_mode": "grayscale"}))
    cfg = load_config(path)
    train, _, _ = load_data(cfg, build_model(cfg))
    images, _ = next(iter(train))
    assert tuple(images.shape[1:]) == (16, 16, 1)


@pytest.mark.slow
def test_command_refuses_mistakes_with_one_line_exit_2_quickly(folder):
    for i in (0, 7, 11, 18, 27):  # a type, the output, a name, the labels, a plan that trains nothing
        (folder / f"bad{i}.yaml").write_text(MISTAKES[i][1])
        result = run_frostline("train", f"bad{i}.yaml", cwd=folder)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"frostline train: error: bad{i}.yaml: {MISTAKES[i][2]}"), lines[0]
        assert "Traceback" not in result.stderr and not (folder / "run").exists()
        assert not re.search(r"wrote ", result.stdout)
    assert os.listdir(folder / "empty") == []
