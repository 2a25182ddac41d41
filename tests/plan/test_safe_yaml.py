"""The bounded YAML loader shared by plans and `frostline train` configurations."""

import time
import tracemalloc

import pytest

from frostline.app.config import load_config
from frostline.errors import ConfigError, PlanError
from frostline.plan.safe_yaml import MAX_YAML_NODES, load_yaml

CONFIG = """\
base: {application: MobileNetV2, weights: none, input_shape: [32, 32, 3]}
head: {classes: 2}
data: {npz: data.npz}
phases:
  - {name: head, epochs: 1, plan: &plan {rules: [{freeze: base}]}}
  - {name: all, epochs: 1, plan: *plan}
output: out
"""


def nested_aliases(levels: int, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_plain_yaml_reads_as_safe_load_would():
    assert load_yaml("a: [1, 2.5, true, null, x]\nb: {c: d}\n", error=PlanError, what="Plan") == {
        "a": [1, 2.5, True, None, "x"], "b": {"c": "d"}}
    assert load_yaml("", error=PlanError, what="Plan") is None


@pytest.mark.parametrize("levels", [3, 6, 9, 12])
def test_aliases_allowed_are_bounded_in_time_and_memory(levels):
    text = nested_aliases(levels)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        if 9**levels > MAX_YAML_NODES:
            with pytest.raises(PlanError, match=r"found aliases that expand to more than 100,000 values or 64 levels"):
                load_yaml(text, error=PlanError, what="Plan", aliases=True)
        else:
            assert load_yaml(text, error=PlanError, what="Plan", aliases=True)["a0"] == ["x"] * 9
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 4 * 2**20


def test_a_long_chain_of_aliases_is_refused_by_depth():
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 200)]
    with pytest.raises(PlanError, match="expand to more than 100,000 values or 64 levels"):
        load_yaml("\n".join(lines), error=PlanError, what="Plan", aliases=True)


def test_an_alias_inside_its_own_anchor_is_refused():
    with pytest.raises(PlanError, match="found an alias that refers to a value containing it"):
        load_yaml("a: &a [x, *a]\n", error=PlanError, what="Plan", aliases=True)


def test_merge_keys_are_not_duplicate_keys():
    text = "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n"
    assert load_yaml(text, error=PlanError, what="Plan", aliases=True)["other"] == {"x": 1, "y": 3}


def test_training_config_keeps_anchors_but_bounds_them(tmp_path):
    (tmp_path / "data.npz").write_bytes(b"")
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    config = load_config(path)
    assert config.phases[0].plan == config.phases[1].plan == {"rules": [{"freeze": "base"}]}
    path.write_text(CONFIG + "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"^malformed YAML at line 9, column 1: found the key 'seed' twice in one mapping"):
        load_config(path)
    path.write_text(nested_aliases(9))
    with pytest.raises(ConfigError, match=r"^malformed YAML at line 6, column 5: found aliases that expand to more than 100,000 values"):
        load_config(path)
    path.write_bytes(b"seed: \xff\n")
    with pytest.raises(ConfigError, match=r"^config: expected UTF-8 text"):
        load_config(path)
