"""Builds examples/small_cnn.keras, the model the README's first command inspects.

A small convolutional base (three blocks of Conv2D + BatchNormalization) nested in a
Sequential model under a new classification head. Run from the repository root:

    python examples/make_small_cnn.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402


def small_cnn(num_classes: int = 5) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1), name="image")
    x = inputs
    for block, filters in enumerate((8, 16, 32), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
        if block < 3:
            x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    base = keras.Model(inputs, x, name="base")
    return keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            base,
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dropout(0.2, name="dropout"),
            keras.layers.Dense(num_classes, activation="softmax", name="head"),
        ],
        name="small_cnn",
    )


if __name__ == "__main__":
    model = small_cnn()
    here = os.path.dirname(os.path.abspath(__file__))
    model.save(os.path.join(here, "small_cnn.keras"))
    print(f"wrote {os.path.join(here, 'small_cnn.keras')}")
