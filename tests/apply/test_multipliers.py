"""Discriminative learning rates: `Plan.lr`."""

import keras
import numpy as np
import pytest

import frostline as fl
from model_zoo import nested
from parity.helpers import compiled, fit, numpy


def head_delta(optimizer, multiplier):
    """The head's change in one step of 8 samples, with its learning rate times `multiplier`."""
    keras.utils.set_random_seed(0)
    model = compiled(nested(), optimizer)
    fl.apply(model, fl.Plan().freeze("base").lr("head", multiplier))
    before = numpy(model.get_layer("head").kernel)
    fit(model, n=8, batch_size=8)
    return numpy(model.get_layer("head").kernel) - before


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
    model = compiled(nested(), "adam")
    report = fl.apply(model, fl.Plan().lr("base", 0.0))
    stem = model.get_layer("base").get_layer("stem")
    before = numpy(stem.kernel)
    fit(model, n=8, batch_size=8)
    np.testing.assert_array_equal(numpy(stem.kernel), before)
    assert {r.path: r.lr for r in report.rows}["base/stem"] == "x0"
    assert {r.path: r.state for r in report.rows}["base/stem"] == "trainable"


def test_multipliers_survive_migration_and_can_be_reset():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    fl.apply(model, fl.Plan().freeze("base").lr("head", 0.5))
    fit(model, n=8, batch_size=8)
    fl.apply(model, fl.Plan().unfreeze("conv2"))
    head = model.get_layer("head")
    assert {r.path: r.lr for r in fl.report(model).rows}["head"] == "x0.5"
    fl.apply(model, fl.Plan().lr("**", 1.0))
    assert not fl.report(model).has_lr_multipliers
    fit(model, n=8, batch_size=8)
    assert head.trainable
