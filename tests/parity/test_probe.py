"""Parity: `fl.probe` finds the cut a task with a known answer has, on every backend, and the
schedule `from_probe` gives trains what it says."""

import keras
import numpy as np

import frostline as fl


def bottleneck_task(n: int = 256, seed: int = 0):
    """A base whose first layer keeps the inputs and whose second throws away the one feature
    the label depends on: the probe must prefer the cut after the first."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((8,), name="x")
    keep = keras.layers.Dense(8, name="keep", kernel_initializer="identity")
    squash = keras.layers.Dense(2, name="squash")
    base = keras.Model(inputs, squash(keep(inputs)), name="base")
    kernel = rng.normal(size=(8, 2)).astype("float32")
    kernel[0] = 0.0  # nothing of x[:, 0] gets through
    squash.set_weights([kernel, np.zeros(2, "float32")])
    model = keras.Sequential([keras.Input((8,)), base, keras.layers.Dense(2, name="head")], name="task")
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return model, (x[: n * 3 // 4], y[: n * 3 // 4]), (x[n * 3 // 4:], y[n * 3 // 4:])


def _values(model):
    """Each weight by its layer's name and its index in the layer."""
    return {f"{layer.name}/{i}": np.array(w) for layer in model._flatten_layers() if not isinstance(layer, keras.Model)
            for i, w in enumerate(layer.weights)}


def test_probe_prefers_the_cut_before_the_bottleneck():
    model, (x, y), validation = bottleneck_task()
    before = _values(model)
    flags = [(layer.name, layer.trainable) for layer in model._flatten_layers()]
    result = fl.probe(model, x, y, validation_data=validation, seed=0)
    assert [row["cut"] for row in result.rows] == ["base/keep", "base/squash"]
    keep, squash = result.rows
    assert result.best is keep
    assert keep["score"] >= 0.95, result
    assert squash["score"] <= 0.75, result
    assert (keep["frozen_params"], squash["frozen_params"]) == (8 * 8 + 8, 8 * 8 + 8 + 8 * 2 + 2)
    assert keep["freeze"] == ["base/keep"] and squash["freeze"] == ["base"]
    assert result.base == ["base"] and result.metric == "accuracy"
    # The model is as it was: every weight, every flag.
    assert all(np.array_equal(before[k], v) for k, v in _values(model).items())
    assert [(layer.name, layer.trainable) for layer in model._flatten_layers()] == flags
    again = fl.probe(model, x, y, validation_data=validation, seed=0)
    assert [r["score"] for r in again.rows] == [r["score"] for r in result.rows]


def test_from_probe_keeps_the_cut_frozen_and_trains_above_it():
    model, (x, y), validation = bottleneck_task()
    result = fl.probe(model, x, y, validation_data=validation, epochs=5)
    phases = fl.schedules.from_probe(result, head_epochs=2, finetune_epochs=2, finetune_learning_rate=1e-2)
    assert [p.name for p in phases] == ["head", "finetune"]
    before = _values(model)
    run = fl.FineTune(model, phases, optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    run.fit(x, y, batch_size=32, verbose=0)
    after = _values(model)
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert moved == {"head/0", "head/1", "squash/0", "squash/1"}, moved
