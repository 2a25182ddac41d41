import keras
import numpy as np

import frostline as fl
from frostline.model.modes import is_forced_inference, layer_mode
from model_zoo import nested


def dropout_model():
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, name="d"), keras.layers.Dropout(0.9, name="drop")],
        name="m",
    )


def test_dropout_is_off_in_inference_mode_while_training():
    model = dropout_model()
    x = np.ones((4, 8), "float32")
    trained = keras.ops.convert_to_numpy(model(x, training=True))
    assert np.mean(trained == 0) > 0.5  # dropout at 0.9 zeroes most outputs
    fl.apply(model, fl.Plan().inference("drop"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x, training=True)), keras.ops.convert_to_numpy(model(x, training=False))
    )
    fl.apply(model, fl.Plan().inference("drop", enabled=False))
    assert np.mean(keras.ops.convert_to_numpy(model(x, training=True)) == 0) > 0.5


def test_inference_on_a_container_reaches_every_layer_inside():
    model = nested()
    fl.apply(model, fl.Plan().inference("base"))
    bn = model.get_layer("base").get_layer("stem_bn")
    assert is_forced_inference(bn) and is_forced_inference(model.get_layer("base"))
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros((8, 3), "float32"), verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean.value), np.zeros(5))


def test_report_mode_column_shows_inference_training_or_nothing():
    model = nested()
    fl.apply(model, fl.Plan().freeze("stem_bn"))
    modes = {r.path: r.mode for r in fl.report(model).rows}
    assert modes["base/stem_bn"] == "inference"  # frozen BatchNormalization: Keras does it
    assert modes["head"] == "-"
    fl.apply(model, fl.Plan().unfreeze("stem_bn"))
    assert {r.path: r.mode for r in fl.report(model).rows}["base/stem_bn"] == "training"
    assert layer_mode(keras.layers.Dropout(0.1)) == "training"
    assert "mode" in str(fl.report(model)).splitlines()[0]


def test_positional_training_argument_is_overridden_too():
    layer = keras.layers.Dropout(0.99)
    model = keras.Sequential([keras.Input((4,)), layer])
    fl.apply(model, fl.Plan().inference("[:]"))
    x = keras.ops.ones((2, 4))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.call(x, True)), np.ones((2, 4)))


class _Noisy(keras.layers.Layer):
    """A layer of the user's own that takes `training`: it may use it."""

    def call(self, x, training=None):
        return x


class _Block(keras.layers.Layer):
    """A user container whose `call` does not take `training`: Keras still passes it
    down to the Dropout inside through its call context."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)
        self.drop = keras.layers.Dropout(rate)

    def call(self, x):
        return self.drop(self.dense(x))


def test_one_rule_for_layers_that_carry_their_own_randomness():
    mha = keras.layers.MultiHeadAttention(2, 4, dropout=0.5)
    mha(keras.ops.ones((1, 3, 4)), keras.ops.ones((1, 3, 4)))  # its sublayers are made when built
    quiet_mha = keras.layers.MultiHeadAttention(2, 4)
    quiet_mha(keras.ops.ones((1, 3, 4)), keras.ops.ones((1, 3, 4)))
    cases = {
        "LSTM(dropout=0.5)": (keras.layers.LSTM(4, dropout=0.5), "training"),
        "GRU(recurrent_dropout=0.2)": (keras.layers.GRU(4, recurrent_dropout=0.2), "training"),
        "LSTM()": (keras.layers.LSTM(4), "-"),
        "MultiHeadAttention(dropout=0.5)": (mha, "training"),
        "MultiHeadAttention()": (quiet_mha, "-"),
        "TimeDistributed(Dropout(0.5))": (keras.layers.TimeDistributed(keras.layers.Dropout(0.5)), "training"),
        "Bidirectional(LSTM(dropout=0.3))": (keras.layers.Bidirectional(keras.layers.LSTM(2, dropout=0.3)), "training"),
        "Dropout(0.0)": (keras.layers.Dropout(0.0), "-"),
        "GaussianNoise(0.0)": (keras.layers.GaussianNoise(0.0), "-"),
        "GaussianNoise(0.1)": (keras.layers.GaussianNoise(0.1), "training"),
        "RandomFlip": (keras.layers.RandomFlip(), "training"),
        "user layer taking training": (_Noisy(), "training"),
        "user container with Dropout(0.5)": (_Block(0.5), "training"),
        "user container with Dropout(0.0)": (_Block(0.0), "-"),
        "Dense": (keras.layers.Dense(2), "-"),
    }
    got = {name: layer_mode(layer) for name, (layer, _) in cases.items()}
    assert got == {name: want for name, (_, want) in cases.items()}


def test_a_container_runs_in_training_mode_when_something_inside_does():
    model = nested()
    modes = {r.path: r.mode for r in fl.report(model).rows}
    assert modes["base"] == "training" and modes["base/stem_bn"] == "training"
    fl.apply(model, fl.Plan().freeze("base"))
    modes = {r.path: r.mode for r in fl.report(model).rows}
    assert modes["base"] == "-" and modes["base/stem_bn"] == "inference"
    fl.apply(model, fl.Plan().unfreeze("base").inference("base"))
    assert {r.path: r.mode for r in fl.report(model).rows}["base"] == "inference"
