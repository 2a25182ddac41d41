"""A phase's `cache` and `cache_views` in a `frostline train` config reach the run: each
command's cache line says what the phase trained on, and config.yaml keeps the settings."""

import keras
import numpy as np
import pytest
import yaml

from parity.helpers import ROOT, run_frostline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    work = tmp_path_factory.mktemp("cache")
    keras.saving.load_model(ROOT / "examples" / "small_cnn.keras").layers[0].save(work / "base.keras")  # 16x16x1
    augmenting = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.RandomFlip("horizontal", name="flip"),
                                   keras.layers.Conv2D(4, 3, name="conv")], name="augmenting")
    augmenting.save(work / "augmenting.keras")
    rng = np.random.default_rng(0)
    np.savez(work / "data.npz", x_train=rng.random((16, 16, 16, 1), dtype="float32"), y_train=np.arange(16) % 3)
    from PIL import Image

    for i in range(12):  # an image folder: 3 classes of grey 16x16 images
        (work / "images" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(work / "images" / f"c{i % 3}" / f"{i}.png")
    return work


def train(folder, name, base="base.keras", data=None, **phase):
    config = {
        "base": {"keras": base}, "head": {"classes": 3}, "data": data or {"npz": "data.npz", "batch_size": 4},
        "phases": [{"name": "head", "epochs": 2, "plan": {"rules": [{"freeze": "base"}]}, **phase}],
        "output": f"run_{name}",
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return run_frostline("train", f"{name}.yaml", "--quiet", cwd=folder)


@pytest.mark.slow
def test_cache_false_trains_the_phase_uncached(folder):
    result = train(folder, "off", cache=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("phase 1/1 'head': ") and lines[1] == "  cache: off (cache=False)", result.stdout
    written = yaml.safe_load((folder / "run_off" / "config.yaml").read_text())
    assert written["phases"][0]["cache"] is False and written["phases"][0]["cache_views"] is None
    assert train(folder, "auto").stdout.splitlines()[1].startswith("  cache: memory, ")  # the default caches here


@pytest.mark.slow
def test_cache_views_caches_views_of_an_augmenting_base(folder):
    result = train(folder, "views", base="augmenting.keras", cache="memory", cache_views=2)
    assert result.returncode == 0, result.stderr
    cache_line = result.stdout.splitlines()[1]
    assert cache_line.startswith("  cache: memory, ") and "2 views through flip (epoch e trains on view e % 2" in cache_line
    assert yaml.safe_load((folder / "run_views" / "config.yaml").read_text())["phases"][0]["cache_views"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("name, phase, message", [
    ("mode", {"cache": "dsk"}, "phases[0].cache: expected auto, memory, disk or false (true is auto); received 'dsk'. "
                               "Did you mean 'disk'?"),
    ("number", {"cache": 1}, "phases[0].cache: expected auto, memory, disk or false (true is auto); received 1."),
    ("views_type", {"cache_views": "two"}, "phases[0].cache_views: Input should be a valid integer"),
    ("views_bool", {"cache_views": True}, "phases[0].cache_views: Input should be a valid integer; received true, a boolean"),
    ("views_off", {"cache": False, "cache_views": 2}, "phases[0].cache_views: 2 asks for cached views"),
    ("views_arrays", {"cache_views": 2}, "phases[0].cache_views: Phase 'head' has cache_views=2, but nothing random"),
    ("views_folder", {"cache_views": 2}, "phases[0].cache_views: Phase 'head' has cache_views=2, but nothing random"),
    ("one_epoch", {"cache": "disk", "epochs": 1}, "phases[0].cache: phase 'head' asks for cache: disk, which cannot "
                                                 "apply: a phase of one epoch computes each activation once anyway."),
])
def test_bad_cache_settings_are_one_line_exit_2_and_write_nothing(folder, name, phase, message):
    data = None
    if name == "views_folder":
        data = {"images": "images", "image_size": [16, 16], "color_mode": "grayscale", "batch_size": 4}
    result = train(folder, name, data=data, **phase)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"frostline train: error: {name}.yaml: {message}"), lines[0]
    assert not (folder / f"run_{name}").exists()
