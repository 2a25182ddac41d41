"""Keras's MultiOptimizer: apply migrates it with state kept, and Plan.lr composes with it."""

import keras
import numpy as np
import pytest

import frostline as fl
from parity.helpers import numpy


def _model(optimizer):
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                             keras.layers.Dense(3, name="d2")], name="base")
    model = keras.Sequential([base, keras.layers.Dense(2, name="head")], name="m")
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _multi():
    sgd, adam = keras.optimizers.SGD(0.1), keras.optimizers.Adam(1e-2)

    def by_path(variable):
        return adam if "head" in variable.path else sgd

    return keras.optimizers.MultiOptimizer(by_path)


def _data():
    rng = np.random.default_rng(0)
    return rng.random((16, 4)).astype("float32"), rng.random((16, 2)).astype("float32")


def test_unfreezing_keeps_the_sub_optimizers_state_and_trains_the_new_set():
    model = _model(_multi())
    x, y = _data()
    fl.apply(model, fl.Plan().freeze("base"))
    model.fit(x, y, epochs=2, verbose=0)
    adam = model.optimizer.optimizers[0]
    moments = [numpy(v) for v in adam.variables]
    assert int(numpy(adam.iterations)) == 2
    fl.apply(model, fl.Plan().unfreeze("base/d2"))
    for kept, now in zip(moments, adam.variables):
        np.testing.assert_array_equal(numpy(now), kept)
    before = {v.path: numpy(v) for v in model.weights}
    model.fit(x, y, epochs=1, verbose=0)
    changed = {v.path for v in model.weights if np.any(numpy(v) != before[v.path])}
    assert changed == {"base/d2/kernel", "base/d2/bias", "m/head/kernel", "m/head/bias"}


def test_freezing_after_training_stops_those_updates():
    model = _model(_multi())
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0)
    fl.apply(model, fl.Plan().freeze("base"))
    before = {v.path: numpy(v) for v in model.weights}
    model.fit(x, y, epochs=2, verbose=0)
    assert all(np.array_equal(numpy(v), before[v.path]) for v in model.weights if v.path.startswith("base/"))


def test_lr_multipliers_scale_sub_optimizer_steps_exactly():
    x, y = _data()
    steps = []
    for plan in (fl.Plan().freeze("head").lr("base/d1", 0.25), fl.Plan().freeze("head")):
        keras.utils.set_random_seed(5)
        model = _model(_multi())
        fl.apply(model, plan)
        kernel = model.get_layer("base").get_layer("d1").kernel
        before = numpy(kernel)
        model.train_on_batch(x, y)
        steps.append(numpy(kernel) - before)
    np.testing.assert_allclose(steps[0], 0.25 * steps[1], rtol=1e-3, atol=1e-8)
    assert np.abs(steps[1]).max() > 1e-4


def test_a_phase_learning_rate_on_a_multi_optimizer_is_refused_before_training():
    model = _model(_multi())
    x, y = _data()
    run = fl.FineTune(model, [fl.Phase("a", epochs=1, learning_rate=1e-3)], optimizer=_multi(), loss="mse")
    with pytest.raises(fl.FrostlineTypeError, match="MultiOptimizer has no learning rate"):
        run.fit(x, y, verbose=0)
