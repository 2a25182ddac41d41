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


def _state_model():
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                             keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(3, name="d2")], name="base")
    return keras.Sequential([base, keras.layers.Dense(2, name="head")], name="m")


def test_the_file_stores_the_state_at_save_time_not_only_the_plans(tmp_path):
    model = _state_model()
    fl.apply(model, fl.Plan().freeze("base").inference("base/bn").lr("head", 0.5))
    model.get_layer("base").get_layer("d2").trainable = True  # by hand, after the plan
    model.get_layer("base").get_layer("d1").enable_lora(2)
    model.save(tmp_path / "m.keras")
    loaded = fl.load_model(tmp_path / "m.keras")
    assert sorted(v.name for v in loaded.trainable_weights) == sorted(v.name for v in model.trainable_weights)
    assert [(v.name, v.trainable) for v in loaded.weights] == [(v.name, v.trainable) for v in model.weights]
    assert is_forced_inference(loaded.get_layer("base").get_layer("bn"))
    report = fl.report(loaded)
    assert {r.path: r.lr for r in report.rows}["head"] == "x0.5"
    assert {r.path: r.lora for r in report.rows}["base/d1"] == "r2 · 14"
    assert fl.load_plan(tmp_path / "m.keras") == fl.Plan().freeze("base").inference("base/bn").lr("head", 0.5)


def _rewrite_asset(path, name, data: bytes, out):
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename == f"assets/{name}":
                dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, src.read(info))


def test_a_stored_state_that_disagrees_with_the_model_is_restored_where_it_can_with_a_warning(tmp_path):
    import json

    model = _state_model()
    fl.apply(model, fl.Plan().freeze("base"))
    model.save(tmp_path / "m.keras")
    state = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("assets/frostline_state.json"))
    state["variables"]["base/gone/kernel"] = True
    _rewrite_asset(tmp_path / "m.keras", "frostline_state.json", json.dumps(state).encode(), tmp_path / "edited.keras")
    with pytest.warns(UserWarning, match=r"disagree: 1 stored variable\(s\) are not in the model: \['base/gone/kernel'\]"):
        loaded = fl.load_model(tmp_path / "edited.keras")
    assert sorted(v.name for v in loaded.trainable_weights) == ["bias", "kernel"]


def test_an_asset_that_would_unpack_to_gigabytes_is_refused_unread(tmp_path):
    model = _state_model()
    fl.apply(model, fl.Plan().freeze("base"))
    model.save(tmp_path / "m.keras")
    bomb = b"\x00" * (65 * 2**20)  # compresses to a few kilobytes
    _rewrite_asset(tmp_path / "m.keras", "frostline_state.json", bomb, tmp_path / "bomb.keras")
    assert (tmp_path / "bomb.keras").stat().st_size < 2**20
    with pytest.raises(fl.FrostlineValueError, match="refused unread"):
        fl.load_model(tmp_path / "bomb.keras")
