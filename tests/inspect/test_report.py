import json

import numpy as np
import pytest

import frostline as fl
from model_zoo import applications, nested, shared


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def test_totals_equal_keras_counts(any_model):
    fl.apply(any_model, fl.Plan().freeze("[:1]"))
    report = fl.report(any_model)
    assert report.trainable_params == count(any_model.trainable_weights)
    assert report.frozen_params == count(any_model.non_trainable_weights)
    assert report.total_params == any_model.count_params()
    assert report.rows[0].params == report.total_params
    assert report.rows[0].trainable_params == report.trainable_params


def test_totals_line_reads_trainable_frozen_and_total():
    model = nested()
    fl.apply(model, fl.Plan().freeze("base"))
    report = fl.report(model)
    t, f = count(model.trainable_weights), count(model.non_trainable_weights)
    assert report.totals_line == f"trainable {t:,} ({100 * t / (t + f):.1f}%) · frozen {f:,} · total {t + f:,}"
    assert str(report).splitlines()[-1] == report.totals_line


def test_rows_show_state_and_counts_per_layer():
    model = nested()
    fl.apply(model, fl.Plan().freeze("base").unfreeze("conv1"))
    rows = {r.path: r for r in fl.report(model).rows}
    assert rows["base"].state == "partial"
    assert rows["base/block5/conv1"].state == "trainable"
    assert rows["base/block5/conv2"].state == "frozen"
    assert rows["base/stem_bn"].state == "frozen"
    assert rows["base/stem_bn"].params == 20 and rows["base/stem_bn"].trainable_params == 0
    assert rows["base/block5"].params == 60 and rows["base/block5"].trainable_params == 30
    assert rows["head"].state == "trainable"


def test_weightless_layers_have_no_state():
    rows = {r.path: r for r in fl.report(nested()).rows}
    input_row = next(r for r in rows.values() if r.class_name == "InputLayer")
    assert input_row.state == "-" and input_row.params == 0


def test_shared_layer_is_one_row_naming_its_other_paths():
    report = fl.report(shared())
    rows = [r for r in report.rows if r.name == "common"]
    assert len(rows) == 1 and rows[0].also_at == ("right/common",)
    assert "(shared, also right/common)" in str(report)
    assert report.total_params == shared().count_params()


def test_optimizer_variables_are_reported_apart():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.zeros((4, 6), "float32"), np.zeros((4, 3), "float32"), verbose=0)
    report = fl.report(model)
    optimizer_values = count(model.optimizer.variables)
    assert report.optimizer == {"name": "Adam", "params": optimizer_values}
    assert report.total_params == count(model.weights)  # Keras's summary would add the optimizer
    assert f"optimizer Adam: {optimizer_values:,} state values" in str(report)


def test_report_renders_as_markdown_and_as_a_json_ready_dict():
    model = nested()
    report = fl.apply(model, fl.Plan().freeze("base"))
    md = report.to_markdown()
    assert md.startswith("| layer | class | params | trainable | state |")
    assert "| &nbsp;&nbsp;`head` | Dense | 18 | 0 | frozen |" not in md
    assert "| &nbsp;&nbsp;`head` | Dense | 18 | 18 | trainable |" in md
    assert report.totals_line in md
    data = json.loads(json.dumps(report.to_dict()))
    assert data["totals"] == {
        "trainable": report.trainable_params, "frozen": report.frozen_params, "total": report.total_params,
    }
    base = model.get_layer("base")
    assert data["rules"] == [
        {"index": 1, "rule": "freeze base", "layers": 7, "params": count(base.weights)}
    ]
    assert [r["path"] for r in data["layers"]][:2] == ["outer", "base"]
    assert "\n\n\n" not in md


def test_rule_counts_use_singular_for_one():
    report = fl.apply(nested(), fl.Plan().freeze("head"))
    assert "1. freeze head  1 layer, 18 params" in str(report)


@pytest.mark.slow
def test_max_depth_hides_deep_rows_but_keeps_totals():
    model = applications()
    full = fl.report(model)
    short = full.to_string(max_depth=1)
    assert len(short.splitlines()) < 12 < len(str(full).splitlines())
    assert short.splitlines()[-1] == full.totals_line


def test_report_lr_column_shows_each_layers_multiplier_and_mixed_for_containers():
    plan = fl.Plan().lr("base/**", 0.1).lr("head", 2)
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    report = fl.apply(model, plan)
    lines = str(report).splitlines()
    assert lines[0].split()[-1] == "lr"
    rows = {r.path: r.lr for r in report.rows}
    assert rows["base/stem"] == "x0.1" and rows["head"] == "x2" and rows["outer"] == "mixed"
