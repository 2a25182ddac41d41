"""Parity: a model saved after `fl.apply` loads with its frozen set, plan and optimizer state."""

import keras
import numpy as np

import frostline as fl
from model_zoo import nested
from parity.helpers import STEPS, changed, compiled, fit, trainable_paths, values


def test_save_after_apply_load_and_fit_keeps_frozen_set_and_optimizer_state(tmp_path):
    model = compiled(nested())
    fit(model)
    fl.apply(model, fl.Plan().freeze("base").unfreeze("conv2"))
    fit(model)
    path = tmp_path / "model.keras"
    model.save(path)
    optimizer_values = [keras.ops.convert_to_numpy(v.value) for v in model.optimizer.variables]

    loaded = keras.saving.load_model(path)
    assert trainable_paths(loaded) == trainable_paths(model)
    assert loaded.get_layer("base").trainable  # partial container reads trainable
    assert not loaded.get_layer("base").get_layer("stem").trainable
    assert len(loaded.optimizer.variables) == len(optimizer_values)
    for saved, restored in zip(optimizer_values, loaded.optimizer.variables):
        np.testing.assert_array_equal(saved, keras.ops.convert_to_numpy(restored.value))
    assert fl.load_plan(path) == fl.Plan().freeze("base").unfreeze("conv2")
    before = values(loaded)
    fit(loaded)
    assert changed(before, values(loaded)) == {
        "base/block5/conv2/kernel", "base/block5/conv2/bias", "head/kernel", "head/bias",
    }
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 3 * STEPS
