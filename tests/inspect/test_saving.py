import zipfile

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.model.modes import is_forced_inference
from model_zoo import nested


def test_plan_is_stored_in_the_keras_file_and_read_back(tmp_path):
    model = nested()
    fl.apply(model, fl.Plan().freeze("base"))
    fl.apply(model, fl.Plan().unfreeze("conv2").inference("stem_bn"))
    path = tmp_path / "m.keras"
    model.save(path)
    assert "assets/frostline_plan.yaml" in zipfile.ZipFile(path).namelist()
    assert fl.load_plan(path) == fl.Plan().freeze("base").unfreeze("conv2").inference("stem_bn")
    assert fl.applied_plan(model) == fl.load_plan(path)


def test_load_model_restores_inference_modes_keras_does_not(tmp_path):
    model = nested()
    fl.apply(model, fl.Plan().freeze("base").inference("stem_bn"))
    path = tmp_path / "m.keras"
    model.save(path)
    plain = keras.saving.load_model(path)
    assert not is_forced_inference(plain.get_layer("base").get_layer("stem_bn"))
    loaded = fl.load_model(path)
    assert is_forced_inference(loaded.get_layer("base").get_layer("stem_bn"))
    assert [w.name for w in loaded.trainable_weights] == ["kernel", "bias"]
    assert fl.applied_plan(loaded) == fl.load_plan(path)


def test_whole_frozen_base_loads_with_consistent_container_flags(tmp_path):
    model = nested()
    fl.apply(model, fl.Plan().freeze("base"))
    path = tmp_path / "m.keras"
    model.save(path)
    plain = keras.saving.load_model(path)
    assert [w.name for w in plain.trainable_weights] == ["kernel", "bias"]  # the same frozen set
    # Keras's Sequential.from_config drops `trainable`: a frozen nested Sequential reads
    # trainable=True over its frozen layers. fl.load_model makes every flag consistent.
    loaded = fl.load_model(path)
    base = loaded.get_layer("base")
    assert not any(l.trainable for l in base._flatten_layers() if l.weights)
    assert base.trainable_weights == [] and loaded.get_layer("head").trainable


def test_model_saved_without_a_plan(tmp_path):
    model = nested()
    model.get_layer("head").trainable = False
    path = tmp_path / "m.keras"
    model.save(path)
    with pytest.raises(LookupError, match=r"holds no frostline plan.*fl.Plan.from_model"):
        fl.load_plan(path)
    plan = fl.Plan.from_model(keras.saving.load_model(path))
    fresh = nested()
    fl.apply(fresh, plan)
    assert [l.trainable for l in fresh.layers] == [l.trainable for l in model.layers]


def test_plan_from_model_reproduces_flags_and_modes():
    model = nested()
    fl.apply(model, fl.Plan().freeze("base").unfreeze("conv1").inference("stem_bn"))
    plan = fl.Plan.from_model(model)
    fresh = nested()
    fl.apply(fresh, plan)
    assert [w.name for w in fresh.trainable_weights] == [w.name for w in model.trainable_weights]
    assert fl.Plan.from_model(fresh) == plan


def test_load_plan_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        fl.load_plan(tmp_path / "missing.keras")
    bogus = tmp_path / "bogus.keras"
    bogus.write_text("x")
    with pytest.raises(ValueError, match="Expected a .keras file"):
        fl.load_plan(bogus)


def test_resume_from_saved_compiled_model_after_a_freeze_change_keeps_optimizer_state(tmp_path):
    model = nested()
    model.compile(optimizer="adam", loss="mse")
    x, y = np.ones((8, 6), "float32"), np.ones((8, 3), "float32")
    model.fit(x, y, verbose=0)
    fl.apply(model, fl.Plan().freeze("base"))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no "Skipping variable loading" warning
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 1
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))
