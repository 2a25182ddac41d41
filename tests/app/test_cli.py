"""`frostline inspect` in real processes: the report of a saved model, and one-line errors."""

import hashlib
import json
from pathlib import Path

import keras
import pytest

from parity.helpers import ROOT, run_frostline

EXAMPLE = ROOT / "examples" / "small_cnn.keras"
pytestmark = pytest.mark.slow  # each test runs `frostline inspect` in a fresh process


def run_cli(*args):
    return run_frostline(*args, timeout=300)


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """MobileNetV2(weights=None, include_top=False) under a new head, saved."""
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3))
    model = keras.Sequential(
        [keras.Input((96, 96, 3)), base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)]
    )
    path = tmp_path_factory.mktemp("models") / "mobilenet.keras"
    model.save(path)
    return path


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_inspect_prints_keras_counts_without_plan(mobilenet_file):
    model = keras.saving.load_model(mobilenet_file)
    result = run_cli("inspect", mobilenet_file)
    assert result.returncode == 0, result.stderr
    t = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    f = sum(int(keras.ops.size(w)) for w in model.non_trainable_weights)
    assert result.stdout.strip().splitlines()[-1] == (
        f"trainable {t:,} ({100 * t / (t + f):.1f}%) · frozen {f:,} · total {t + f:,}"
    )


def test_inspect_with_plan_applies_in_memory_only(mobilenet_file, tmp_path):
    model = keras.saving.load_model(mobilenet_file)
    base = model.layers[0]
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"rules:\n- freeze: {base.name}\n- unfreeze: {base.name}/block_16_*\n")
    before = digest(mobilenet_file)
    result = run_cli("inspect", mobilenet_file, "--plan", plan, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # The same freeze written by hand in Keras, as the reference.
    for layer in base.layers:
        layer.trainable = layer.name.startswith("block_16_")
    expected_t = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    expected_f = sum(int(keras.ops.size(w)) for w in model.non_trainable_weights)
    assert data["totals"] == {"trainable": expected_t, "frozen": expected_f, "total": expected_t + expected_f}
    assert data["rules"][0]["rule"] == f"freeze {base.name}"
    assert data["rules"][0]["layers"] == len(base.layers) + 1
    assert data["rules"][1]["layers"] == sum(l.name.startswith("block_16_") for l in base.layers)
    assert digest(mobilenet_file) == before


def test_inspect_shipped_example_with_plan():
    result = run_cli("inspect", EXAMPLE, "--plan", ROOT / "examples" / "plan.yaml")
    assert result.returncode == 0, result.stderr
    assert "1. freeze base" in result.stdout
    assert "2. unfreeze base/block3_*" in result.stdout


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_model_file_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_cli("inspect", tmp_path / "nope.keras"), "model file not found", "nope.keras")


def test_file_that_is_not_a_model_is_a_one_line_error(tmp_path):
    bogus = tmp_path / "notes.keras"
    bogus.write_text("not a model")
    assert_one_line_error(run_cli("inspect", bogus), "is not a Keras model", "zip archive")
    other = tmp_path / "weights.txt"
    other.write_text("not a model")
    assert_one_line_error(run_cli("inspect", other), "is not a readable Keras model")


def test_plan_that_matches_nothing_names_the_closest(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n- freeze: base/block3_cnov\n")
    before = digest(EXAMPLE)
    assert_one_line_error(
        run_cli("inspect", EXAMPLE, "--plan", plan),
        "matched no layer", "Did you mean 'base/block3_conv'",
    )
    assert digest(EXAMPLE) == before


def test_malformed_plan_names_rule_and_field(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n- freeze: base\n- unfreez: head\n")
    assert_one_line_error(run_cli("inspect", EXAMPLE, "--plan", plan), "Plan rule 2", "unknown rule kind 'unfreez'")


def test_missing_plan_file_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_cli("inspect", EXAMPLE, "--plan", tmp_path / "x.yaml"), "plan file not found")


def test_lenient_prints_one_warning_line_and_applies_the_rest(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n- freeze: [base, nothing_like_it]\n")
    result = run_cli("inspect", EXAMPLE, "--plan", plan, "--lenient", "--depth", "1")
    assert result.returncode == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if "nothing_like_it" in l]
    assert len(warnings) == 1 and warnings[0].startswith("frostline inspect: warning: Rule 1")
    assert "  base  " in result.stdout and "frozen" in result.stdout


def test_malformed_yaml_is_one_line(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules: [freeze: base\n")
    assert_one_line_error(run_cli("inspect", EXAMPLE, "--plan", plan), "malformed YAML")


def test_negative_depth_is_refused():
    result = run_cli("inspect", EXAMPLE, "--depth", "-1")
    assert result.returncode == 2
    assert "expected a depth of 0 or more" in result.stderr


def test_inspect_shows_where_the_stored_state_and_plain_keras_differ_side_by_side(tmp_path):
    import frostline as fl

    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                             keras.layers.BatchNormalization(name="bn")], name="base")
    model = keras.Sequential([base, keras.layers.Dense(2, name="head")], name="m")
    fl.apply(model, fl.Plan().inference("base/bn").lr("base/bn", 0.1).freeze("var:head/bias"))
    model.save(tmp_path / "m.keras")
    text = run_cli("inspect", tmp_path / "m.keras", "--depth", "0")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stored frostline state: restored"))
    assert lines[start].endswith("(and other modes), and differs here:")
    assert [line.split() for line in lines[start + 1:]] == [
        ["what", "layer", "stored", "in", "the", "file", "plain", "Keras", "loads"],
        ["mode", "base/bn", "inference", "training"],
        ["lr", "base/bn", "x0.1", "x1"],
        ["state", "head", "partial", "(6", "of", "8)", "trainable"],
    ]
    data = json.loads(run_cli("inspect", tmp_path / "m.keras", "--json").stdout)
    assert data["plain_keras"]["differences"][0] == {
        "what": "mode", "layer": "base/bn", "stored": "inference", "plain_keras": "training"}
    assert data["plain_keras"]["totals"]["trainable"] == data["totals"]["trainable"] + 2


def test_inspect_of_a_file_saved_without_frostline_has_no_stored_state_line():
    result = run_cli("inspect", EXAMPLE, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["stored_state"] is None and data["plain_keras"] is None


def test_inspect_counts_many_differing_layers_under_their_block(tmp_path):
    import frostline as fl

    blocks = [keras.Sequential([keras.Input((4,)), *[keras.layers.Dense(4, name=f"d{j}") for j in range(6)]],
                               name=f"block{i}") for i in range(5)]
    model = keras.Sequential([keras.Input((4,)), *blocks, keras.layers.Dense(2, name="head")], name="m")
    fl.apply(model, fl.Plan().lr("block*/d*", 0.5))  # stored by frostline only, unlike trainable flags
    model.save(tmp_path / "m.keras")
    lines = run_cli("inspect", tmp_path / "m.keras").stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stored frostline state: restored"))
    # 30 Dense layers at x0.5: one row per block, not 30.
    assert [line.split() for line in lines[start + 2:]] == [
        ["lr", f"block{i}/*", "(6", "layers)", "x0.5", "x1"] for i in range(5)]
    data = json.loads(run_cli("inspect", tmp_path / "m.keras", "--json").stdout)
    assert len(data["plain_keras"]["differences"]) == 30
