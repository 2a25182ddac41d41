"""Discriminative learning rates: `Plan.lr`."""

import keras
import numpy as np
import pytest

import frostline as fl
from model_zoo import nested

X = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
Y = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")


def head_delta(optimizer, multiplier):
    keras.utils.set_random_seed(0)
    model = nested()
    model.compile(optimizer=optimizer, loss="mse")
    fl.apply(model, fl.Plan().freeze("base").lr("head", multiplier))
    before = keras.ops.convert_to_numpy(model.get_layer("head").kernel.value).copy()
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return keras.ops.convert_to_numpy(model.get_layer("head").kernel.value) - before


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.Adam(0.01),
        lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
        lambda: keras.optimizers.Nadam(0.01),
        lambda: keras.optimizers.RMSprop(0.01),
        lambda: keras.optimizers.Lion(0.01),
    ],
    ids=["sgd", "adam", "adamw", "nadam", "rmsprop", "lion"],
)
def test_update_is_scaled_by_the_multiplier(make):
    full, quarter = head_delta(make(), 1.0), head_delta(make(), 0.25)
    np.testing.assert_allclose(quarter, 0.25 * full, rtol=1e-4, atol=1e-7)


def test_zero_multiplier_keeps_weights_but_they_stay_trainable():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    report = fl.apply(model, fl.Plan().lr("base", 0.0))
    stem = model.get_layer("base").get_layer("stem")
    before = keras.ops.convert_to_numpy(stem.kernel.value).copy()
    model.fit(X, Y, verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(stem.kernel.value), before)
    assert {r.path: r.lr for r in report.rows}["base/stem"] == "x0"
    assert {r.path: r.state for r in report.rows}["base/stem"] == "trainable"


def test_report_column_and_yaml_round_trip():
    plan = fl.Plan().lr("base/**", 0.1).lr("head", 2)
    assert plan.to_dict() == {"rules": [{"lr": "base/**", "multiplier": 0.1}, {"lr": "head", "multiplier": 2.0}]}
    assert fl.Plan.from_yaml(plan.to_yaml()) == plan
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    report = fl.apply(model, plan)
    lines = str(report).splitlines()
    assert lines[0].split()[-1] == "lr"
    rows = {r.path: r.lr for r in report.rows}
    assert rows["base/stem"] == "x0.1" and rows["head"] == "x2" and rows["outer"] == "mixed"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"lr": "head"}, r"missing field 'multiplier'"),
        ({"lr": "head", "multiplier": "fast"}, r"field 'multiplier' expects float\. Received: 'fast'"),
        ({"lr": "head", "multiplier": -1}, r"expects a finite number of 0 or more\. Received: -1"),
    ],
)
def test_bad_lr_rules(config, message):
    with pytest.raises(fl.PlanError, match=message):
        fl.Plan.from_dict({"rules": [config]})


def test_multipliers_survive_migration_and_can_be_reset():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    fl.apply(model, fl.Plan().freeze("base").lr("head", 0.5))
    model.fit(X, Y, verbose=0)
    fl.apply(model, fl.Plan().unfreeze("conv2"))
    head = model.get_layer("head")
    assert {r.path: r.lr for r in fl.report(model).rows}["head"] == "x0.5"
    fl.apply(model, fl.Plan().lr("**", 1.0))
    assert not fl.report(model).has_lr_multipliers
    model.fit(X, Y, verbose=0)
    assert head.trainable
