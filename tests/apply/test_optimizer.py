"""Optimizer migration when the trainable set changes: state kept for what still trains,
fresh state for what starts to, nothing changed when it cannot be done (JAX, in depth)."""

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.apply.optimizer import migrate_optimizer
from model_zoo import nested
from parity.helpers import fit, numpy


def builtin_optimizers():
    names = []
    for name in dir(keras.optimizers):
        cls = getattr(keras.optimizers, name)
        if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer) and name not in ("Optimizer", "MultiOptimizer"):
            names.append(name)
    return names


def make_optimizer(name):
    if name == "LossScaleOptimizer":
        return keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01))
    if name == "AdamW+ema":
        return keras.optimizers.AdamW(0.01, weight_decay=0.01, use_ema=True)
    if name == "SGD+momentum":
        return keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
    if name == "Adam+accumulation":
        return keras.optimizers.Adam(0.01, gradient_accumulation_steps=2)
    return getattr(keras.optimizers, name)(learning_rate=0.01)


# The fast tier keeps Adam, SGD and the variants with extra state (loss scaling, EMA,
# momentum, accumulation); every other built-in optimizer runs in the full suite.
FAST = {"Adam", "SGD", "LossScaleOptimizer", "AdamW+ema", "SGD+momentum", "Adam+accumulation"}


@pytest.mark.parametrize("name", [
    n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
    for n in builtin_optimizers() + ["AdamW+ema", "SGD+momentum", "Adam+accumulation"]
])
def test_every_builtin_optimizer_keeps_state_across_an_unfreeze(name):
    model = nested()
    model.compile(optimizer=make_optimizer(name), loss="mse")
    fl.apply(model, fl.Plan().freeze("base"))
    fit(model)
    opt = model.optimizer
    iterations = int(numpy(opt._iterations))
    head = {id(v): numpy(v) for v in opt.variables if "head" in v.path}
    fl.apply(model, fl.Plan().unfreeze("conv2"))
    assert fl.sync(model) is False  # apply already did it
    kept = {id(v): numpy(v) for v in opt.variables if id(v) in head}
    assert kept.keys() == head.keys()
    for key in head:
        np.testing.assert_array_equal(kept[key], head[key])
    conv2 = model.get_layer("base").get_layer("block5").get_layer("conv2")
    before = {v.path: numpy(v) for v in model.weights}
    fit(model)
    moved = {v.path for v in model.weights if not np.array_equal(before[v.path], numpy(v)) and "moving" not in v.path}
    expected = {v.path for v in conv2.weights} | {v.path for v in model.get_layer("head").weights}
    # Lion moves each weight by exactly +-lr: a bias can come back to where it was.
    assert moved <= expected and {conv2.kernel.path, model.get_layer("head").kernel.path} <= moved
    assert int(numpy(opt._iterations)) == 2 * iterations


def test_fresh_ema_average_starts_at_the_weights_not_at_zero():
    model = nested()
    model.compile(optimizer=keras.optimizers.AdamW(0.01, use_ema=True), loss="mse")
    fl.apply(model, fl.Plan().freeze("base"))
    fit(model)
    fl.apply(model, fl.Plan().unfreeze("conv2"))
    conv2 = model.get_layer("base").get_layer("block5").get_layer("conv2")
    opt = model.optimizer
    average = opt._model_variables_moving_average[opt._get_variable_index(conv2.kernel)]
    np.testing.assert_array_equal(numpy(average), numpy(conv2.kernel))


def test_failed_migration_leaves_optimizer_and_flags_as_they_were():
    class Unconfigurable(keras.optimizers.SGD):
        def get_config(self):
            raise RuntimeError("no config")

    model = nested()
    model.compile(optimizer=Unconfigurable(0.01), loss="mse")
    fit(model)
    opt = model.optimizer
    variables = list(opt.variables)
    flags = [l.trainable for l in model._flatten_layers()]
    with pytest.raises(TypeError, match="cannot rebuild optimizer Unconfigurable.*recompile"):
        fl.apply(model, fl.Plan().freeze("base"))
    assert [l.trainable for l in model._flatten_layers()] == flags
    assert [id(v) for v in opt.variables] == [id(v) for v in variables]
    fit(model)  # still trains


def test_migrate_is_a_no_op_for_the_same_set():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    fit(model)
    opt = model.optimizer
    before = list(opt.variables)
    migrate_optimizer(opt, model.trainable_variables)
    assert [id(v) for v in opt.variables] == [id(v) for v in before]


def test_scoped_gives_back_the_slots_of_variables_frozen_inside():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    fit(model)
    opt = model.optimizer
    stem = model.get_layer("base").get_layer("stem")
    slot = opt._momentums[opt._get_variable_index(stem.kernel)]
    value = numpy(slot)
    with fl.scoped(model, fl.Plan().freeze("base")):
        fit(model)
        assert all(v is not stem.kernel for v in opt._trainable_variables)
    assert opt._momentums[opt._get_variable_index(stem.kernel)] is slot
    np.testing.assert_array_equal(numpy(slot), value)
