"""`fl.sync`: hand-set flags take effect on a compiled model (JAX, in depth; the parity
suite covers the backends)."""

import warnings

import keras

import frostline as fl
from model_zoo import nested
from parity.helpers import fit


def test_sync_after_hand_set_flags_and_its_return_value():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    assert fl.sync(model) is False  # optimizer not built yet: nothing to do
    fit(model)
    assert fl.sync(model) is True  # functions traced before frostline saw them
    assert fl.sync(model) is False
    model.get_layer("head").trainable = False
    function = model.train_function
    assert fl.sync(model) is True
    assert model.train_function is not function
    assert len(model.optimizer.variables) == 2 + 2 * (len(model.trainable_weights))


def test_keras_does_not_warn_to_recompile_after_sync():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    fit(model)
    model.get_layer("base").trainable = False
    fl.sync(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(model)


def test_apply_that_changes_nothing_keeps_compiled_functions():
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    fl.apply(model, fl.Plan().freeze("base"))
    fit(model)
    fl.sync(model)
    fit(model)
    function = model.train_function
    fl.apply(model, fl.Plan().freeze("base"))
    assert model.train_function is function


def test_second_fit_of_an_ema_optimizer_works_on_jax():
    # Plain Keras 3.15 on JAX fails the second fit of an EMA optimizer (shared buffers).
    model = nested()
    model.compile(optimizer=keras.optimizers.AdamW(0.01, use_ema=True), loss="mse")
    fit(model, callbacks=[fl.FreezeGuard()])
    fit(model, callbacks=[fl.FreezeGuard()])
    fl.sync(model)
    fit(model)
