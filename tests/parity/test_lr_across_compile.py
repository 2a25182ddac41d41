"""Parity: `Plan.lr` multipliers hold on an optimizer given after the plan — a compile
after `fl.apply`, a recompile, a compile after `fl.load_model(compile=False)`."""

import keras
import numpy as np

import frostline as fl
from parity.helpers import arrays, numpy


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="body"),
                             keras.layers.Dense(3, name="head")], name="net")


def _step(model):
    """One SGD step on one batch; returns how far each kernel moved."""
    before = {l.name: numpy(l.kernel) for l in model.layers}
    x, y = arrays(8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return {name: numpy(model.get_layer(name).kernel) - value for name, value in before.items()}


def _plain_step():
    plain = _model()
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return _step(plain)


def _assert_half_for_head(moved, plain):
    np.testing.assert_allclose(moved["body"], plain["body"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(moved["head"], 0.5 * plain["head"], rtol=1e-5, atol=1e-7)
    assert np.abs(plain["head"]).max() > 1e-4


def test_a_model_compiled_after_the_plan_uses_its_multipliers():
    model = _model()
    fl.apply(model, fl.Plan().lr("head", 0.5))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    _assert_half_for_head(_step(model), _plain_step())


def test_a_recompiled_model_keeps_its_multipliers():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.3), loss="mse")
    fl.apply(model, fl.Plan().lr("head", 0.5))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    _assert_half_for_head(_step(model), _plain_step())


def test_a_loaded_model_compiled_after_loading_keeps_its_multipliers(tmp_path):
    model = _model()
    fl.apply(model, fl.Plan().lr("head", 0.5))
    model.save(tmp_path / "net.keras")
    loaded = fl.load_model(tmp_path / "net.keras", compile=False)
    loaded.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    _assert_half_for_head(_step(loaded), _plain_step())
