"""Small models of every shape frostline must walk, shared by the tests."""

from __future__ import annotations

import keras


def sequential() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(4, name="d2"),
            keras.layers.Dropout(0.1, name="drop"),
            keras.layers.Dense(3, name="d3"),
        ],
        name="seq",
    )


def functional() -> keras.Model:
    inputs = keras.Input((6,), name="x")
    a = keras.layers.Dense(5, name="a")(inputs)
    b = keras.layers.Dense(5, name="b")(inputs)
    merged = keras.layers.Add(name="add")([a, b])
    out = keras.layers.Dense(2, name="out")(merged)
    return keras.Model(inputs, out, name="func")


def nested() -> keras.Model:
    """Three levels: outer Sequential > base Functional > block Sequential."""
    block = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(5, name="conv1"), keras.layers.Dense(5, name="conv2")],
        name="block5",
    )
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = block(x)
    base = keras.Model(inputs, x, name="base")
    return keras.Sequential(
        [keras.Input((6,)), base, keras.layers.Dense(3, name="head")], name="outer"
    )


class Tower(keras.Model):
    """A subclassed model holding sublayers in an attribute and in a list."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = keras.layers.Dense(5, name="stem")
        self.blocks = [keras.layers.Dense(5, name=f"block{i}") for i in range(3)]
        self.inner = keras.Sequential([keras.layers.Dense(4, name="inner_dense")], name="inner")
        self.head = keras.layers.Dense(2, name="head")

    def call(self, x, training=None):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.inner(x))


def subclassed() -> keras.Model:
    model = Tower(name="tower")
    model(keras.ops.ones((1, 6)))
    return model


def shared() -> keras.Model:
    """Two sub-models that both hold the same Dense layer."""
    common = keras.layers.Dense(4, name="common")
    left = keras.Sequential([keras.Input((6,)), common, keras.layers.Dense(4, name="l2")], name="left")
    right = keras.Sequential([keras.Input((6,)), common, keras.layers.Dense(4, name="r2")], name="right")
    inputs = keras.Input((6,))
    out = keras.layers.Add(name="sum")([left(inputs), right(inputs)])
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(out), name="twin")


def applications() -> keras.Model:
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35
    )
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(3, name="head"),
        ],
        name="transfer",
    )


def skip_model():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="frozen1")(inputs)
    h = keras.layers.Dense(8, name="frozen2")(h)
    t = keras.layers.Dense(8, activation="relu", name="train1")(h)
    merged = keras.layers.Add(name="skip")([h, t])  # the skip connection crosses the cut
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(merged), name="skipnet")


MODEL_BUILDERS = {
    "sequential": sequential,
    "functional": functional,
    "nested": nested,
    "subclassed": subclassed,
    "shared": shared,
    "applications": applications,
}


def input_shape(model: keras.Model) -> tuple[int, ...]:
    """Input shape (without batch) of a zoo model."""
    return (32, 32, 3) if model.name == "transfer" else (6,)
