"""`var:` selectors: rules that freeze, unfreeze or scale single variables."""

import keras
import numpy as np
import pytest

import frostline as fl


def _model():
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                             keras.layers.BatchNormalization(name="bn")], name="base")
    model = keras.Sequential([base, keras.layers.Dense(2, name="head")], name="model")
    model.compile(optimizer="sgd", loss="mse")
    return model


def _values(model):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def _data():
    rng = np.random.default_rng(0)
    return rng.random((16, 4)).astype("float32"), rng.random((16, 2)).astype("float32")


def test_unfreezing_biases_of_a_frozen_base_trains_only_them():
    model = _model()
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0)
    fl.apply(model, fl.Plan().freeze("base").unfreeze("var:base/**/bias"))
    before = _values(model)
    model.fit(x, y, epochs=2, verbose=0)
    after = _values(model)
    changed = {p for p in before if np.any(before[p] != after[p])}
    assert {"base/d1/bias", "model/head/kernel", "model/head/bias"} <= changed
    assert "base/d1/kernel" not in changed
    assert "base/bn/gamma" not in changed and "base/bn/beta" not in changed


def test_a_later_layer_rule_overrides_an_earlier_variable_rule():
    model = _model()
    fl.apply(model, fl.Plan().freeze("var:head/kernel").unfreeze("head"))
    assert model.get_layer("head").kernel.trainable
    fl.apply(model, fl.Plan().freeze("head").unfreeze("var:head/kernel"))
    assert [v.name for v in model.get_layer("head").trainable_weights] == ["kernel"]


def test_variable_lr_multiplier_scales_that_variable_only():
    x, y = _data()
    steps = []
    for plan in (fl.Plan().freeze("base").lr("var:head/kernel", 0.25), fl.Plan().freeze("base")):
        keras.utils.set_random_seed(3)
        model = _model()
        fl.apply(model, plan)
        head = model.get_layer("head")
        before = [keras.ops.convert_to_numpy(v).copy() for v in (head.kernel, head.bias)]
        model.train_on_batch(x, y)
        steps.append([keras.ops.convert_to_numpy(v) - b for v, b in zip((head.kernel, head.bias), before)])
    (kernel_scaled, bias_scaled), (kernel_plain, bias_plain) = steps
    np.testing.assert_allclose(kernel_scaled, 0.25 * kernel_plain, rtol=1e-3, atol=1e-8)
    np.testing.assert_allclose(bias_scaled, bias_plain, rtol=1e-3, atol=1e-8)
    assert np.abs(kernel_plain).max() > 1e-5  # the step is not zero, so the ratio means something


def test_plan_from_model_reproduces_partly_frozen_layers():
    model = _model()
    fl.apply(model, fl.Plan().freeze("var:base/d1/kernel"))
    plan = fl.Plan.from_model(model)
    fresh = _model()
    fl.apply(fresh, plan)
    assert [v.path for v in fresh.trainable_weights] == [v.path for v in model.trainable_weights]


@pytest.mark.parametrize(
    "plan, message",
    [
        (lambda: fl.Plan().freeze("var:base/d1/kernl"), "Did you mean 'var:base/d1/kernel'?"),
        (lambda: fl.Plan().inference("var:base/bn/gamma"), "belongs to a layer"),
        (lambda: fl.Plan().unfreeze("var:base/bn/moving_mean"), "never train"),
        (lambda: fl.Plan().lr("var:nothing/**", 2.0), "matched no variable"),
    ],
)
def test_bad_variable_rules_are_plan_errors_that_change_nothing(plan, message):
    model = _model()
    fl.apply(model, fl.Plan().freeze("base"))
    flags = [(v.path, v.trainable) for v in model.weights] + [(l.name, l.trainable) for l in model._flatten_layers()]
    with pytest.raises(fl.PlanError, match=message.replace("?", r"\?").replace("(", r"\(")):
        fl.apply(model, plan())
    assert flags == [(v.path, v.trainable) for v in model.weights] + [(l.name, l.trainable) for l in model._flatten_layers()]


def test_empty_variable_selector_is_refused():
    with pytest.raises(fl.PlanError, match="after 'var:'"):
        fl.Plan().freeze("var:")
