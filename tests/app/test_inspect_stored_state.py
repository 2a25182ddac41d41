"""`frostline inspect` tells the truth about a saved model: the state the file stores."""

import json

import keras
import pytest

import frostline as fl
from parity.helpers import run_frostline

pytestmark = pytest.mark.slow  # `frostline inspect` in fresh processes


def _saved(tmp_path):
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                             keras.layers.BatchNormalization(name="bn")], name="base")
    model = keras.Sequential([base, keras.layers.Dense(2, name="head")], name="m")
    fl.apply(model, fl.Plan().inference("base/bn"))  # BatchNormalization trains, in inference mode
    model.get_layer("head").trainable = False  # by hand, after the plan
    path = tmp_path / "m.keras"
    model.save(path)
    return path


def test_inspect_shows_the_stored_modes_and_frozen_set_and_what_plain_keras_would_load(tmp_path):
    path = _saved(tmp_path)
    result = run_frostline("inspect", str(path), timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip().startswith(("base/", "head"))}
    assert rows["base/bn"][-1] == "inference"
    assert rows["head"][4] == "frozen"
    plain = fl.report(keras.saving.load_model(path))
    assert {r.path: r.mode for r in plain.rows}["base/bn"] == "training"  # what Keras alone loads
    assert f"plain keras.saving.load_model would give {plain.totals_line} (and other modes)" in result.stdout


def test_inspect_json_names_the_stored_state(tmp_path):
    result = run_frostline("inspect", str(_saved(tmp_path)), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["stored_state"].startswith("stored frostline state: restored")
    assert {row["path"]: row["mode"] for row in data["layers"]}["base/bn"] == "inference"
