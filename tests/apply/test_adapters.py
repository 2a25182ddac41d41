"""LoRA adapters as plan rules: Plan.lora, save/load by layer path, merge, QLoRA."""

import keras
import numpy as np
import pytest

import frostline as fl
from parity.helpers import numpy


def _model(order=("d1", "d2")):
    inputs = keras.Input((6,))
    layers = {name: keras.layers.Dense(8, name=name) for name in order}  # creation order varies
    h = layers["d1"](inputs)
    h = keras.layers.LayerNormalization(name="ln")(h)
    h = layers["d2"](h)
    base = keras.Model(inputs, h, name="base")
    model = keras.Sequential([base, keras.layers.Dense(3, name="logits")], name="m")
    model.compile(optimizer="adam", loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.random((32, 6)).astype("float32"), rng.random((32, 3)).astype("float32")


def _dense(model, name):
    return model.get_layer("base").get_layer(name)


def test_lora_rule_trains_only_adapters_and_head_kernels_stay_bit_identical():
    model = _model()
    x, y = _data()
    fl.apply(model, fl.Plan().freeze("**").lora("base", rank=2).unfreeze("logits"))
    kernels = {n: numpy(_dense(model, n)._kernel) for n in ("d1", "d2")}
    adapters = {n: numpy(_dense(model, n).lora_kernel_b) for n in ("d1", "d2")}
    model.fit(x, y, epochs=3, verbose=0)
    for n in ("d1", "d2"):
        np.testing.assert_array_equal(numpy(_dense(model, n)._kernel), kernels[n])
        assert np.any(numpy(_dense(model, n).lora_kernel_b) != adapters[n])
    assert sorted(v.name for v in model.trainable_weights) == sorted(
        ["lora_kernel_a", "lora_kernel_b"] * 2 + ["kernel", "bias"])


def test_unfreezing_the_container_later_keeps_adapted_kernels_frozen():
    model = _model()
    x, y = _data()
    fl.apply(model, fl.Plan().freeze("**").lora("d1", rank=2))
    fl.apply(model, fl.Plan().unfreeze("base"))
    kernel = numpy(_dense(model, "d1")._kernel)
    model.fit(x, y, epochs=2, verbose=0)
    np.testing.assert_array_equal(numpy(_dense(model, "d1")._kernel), kernel)
    assert _dense(model, "d2").kernel.trainable  # not adapted: unfrozen as asked


def test_kernels_adapted_outside_a_plan_stay_frozen_too():
    model = _model()
    _dense(model, "d1").enable_lora(2)
    fl.apply(model, fl.Plan().unfreeze("**"))
    assert not _dense(model, "d1")._kernel.trainable
    assert {v.name for v in _dense(model, "d1").trainable_weights} == {"bias", "lora_kernel_a", "lora_kernel_b"}


def test_failed_plan_adds_no_adapters_and_changes_no_flag():
    model = _model()
    flags = [(v.path, v.trainable) for v in model.weights]
    with pytest.raises(fl.PlanError, match="matched no layer"):
        fl.apply(model, fl.Plan().lora("base", rank=2).freeze("no_such_layer"))
    assert not _dense(model, "d1").lora_enabled
    assert [(v.path, v.trainable) for v in model.weights] == flags


@pytest.mark.parametrize(
    "plan, message",
    [
        (lambda: fl.Plan().lora("ln", rank=2), "cannot give LoRA adapters to 'base/ln'"),
        (lambda: fl.Plan().lora("d1", rank=2).lora("d1", rank=3), "already has LoRA adapters of rank 2"),
    ],
)
def test_bad_lora_rules_are_plan_errors(plan, message):
    model = _model()
    with pytest.raises(fl.PlanError, match=message):
        fl.apply(model, plan())
    assert not _dense(model, "d1").lora_enabled


@pytest.mark.parametrize("rank", [0, -1, 2.5, True, "8"])
def test_rank_must_be_a_positive_integer(rank):
    with pytest.raises(fl.PlanError, match="rank"):
        fl.Plan().lora("d1", rank=rank)


def test_scoped_lora_is_taken_out_on_exit():
    model = _model()
    with fl.scoped(model, fl.Plan().freeze("**").lora("base", rank=2)):
        assert _dense(model, "d1").lora_enabled
    assert not _dense(model, "d1").lora_enabled
    assert len(model.trainable_weights) == 8


def test_adapters_load_by_layer_path_into_a_model_built_in_another_order(tmp_path):
    source = _model(("d1", "d2"))
    x, y = _data()
    fl.apply(source, fl.Plan().freeze("**").lora("base", rank=2))
    source.fit(x, y, epochs=2, verbose=0)
    path = fl.save_adapters(source, tmp_path / "run.adapters")
    target = _model(("d2", "d1"))  # the same paths, the layers made the other way round
    assert fl.load_adapters(target, path) == ["base/d1", "base/d2"]
    for n in ("d1", "d2"):
        for name in ("lora_kernel_a", "lora_kernel_b"):
            np.testing.assert_array_equal(numpy(getattr(_dense(target, n), name)),
                                          numpy(getattr(_dense(source, n), name)))


def test_loading_adapters_into_a_different_model_is_refused_and_changes_nothing(tmp_path):
    source = _model()
    fl.apply(source, fl.Plan().lora("base", rank=2))
    path = fl.save_adapters(source, tmp_path / "a.npz")
    inputs = keras.Input((6,))
    other = keras.Sequential([keras.Model(inputs, keras.layers.Dense(4, name="d1")(inputs), name="base")])
    with pytest.raises(fl.FrostlineValueError, match="does not have"):
        fl.load_adapters(other, path)
    assert not other.get_layer("base").get_layer("d1").lora_enabled
    with pytest.raises(fl.MissingFileError):
        fl.load_adapters(source, tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(fl.FrostlineValueError, match="not an adapter file"):
        fl.load_adapters(source, tmp_path / "junk.npz")


def test_merge_adapters_keeps_outputs_and_removes_adapters(tmp_path):
    model = _model()
    x, y = _data()
    fl.apply(model, fl.Plan().freeze("**").lora("base", rank=2).unfreeze("logits"))
    model.fit(x, y, epochs=2, verbose=0)
    before = model.predict(x, verbose=0)
    assert fl.merge_adapters(model) == ["base/d1", "base/d2"]
    assert not any(v.name.startswith("lora_") for v in model.weights)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "merged.keras")
    loaded = keras.saving.load_model(tmp_path / "merged.keras", compile=False)
    assert not loaded.get_layer("base").get_layer("d1").lora_enabled
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=1e-5, atol=1e-6)


def test_report_shows_rank_and_adapter_parameters():
    model = _model()
    report = fl.apply(model, fl.Plan().lora("d1", rank=2))
    row = next(r for r in report.rows if r.path == "base/d1")
    assert row.lora == "r2 · 28"  # 8x2 + 2x8 ... (6x2 + 2x8)
    assert "lora" in report.to_string().splitlines()[0]


@pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize` method:UserWarning")
def test_qlora_trains_adapters_on_an_int8_model_and_refuses_to_unfreeze_quantized_kernels():
    model = _model()
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0)
    model.quantize("int8")  # every Dense, the head included
    fl.apply(model, fl.Plan().freeze("**").lora(["base", "logits"], rank=2))
    model.compile(optimizer="adam", loss="mse")
    kernel = numpy(_dense(model, "d1")._kernel)
    adapter = numpy(_dense(model, "d1").lora_kernel_b)
    model.fit(x, y, epochs=2, verbose=0)
    np.testing.assert_array_equal(numpy(_dense(model, "d1")._kernel), kernel)
    assert np.any(numpy(_dense(model, "d1").lora_kernel_b) != adapter)
    # Unfreezing the adapted layers keeps their int8 kernels frozen, as for any LoRA layer.
    fl.apply(model, fl.Plan().unfreeze("base"))
    assert not _dense(model, "d1")._kernel.trainable and _dense(model, "d1").lora_kernel_b.trainable
    # A quantized kernel without adapters cannot train: a PlanError that changes nothing.
    plain = _model()
    plain.quantize("int8")
    fl.apply(plain, fl.Plan().freeze("**").lora("base/d1", rank=2))
    flags = [(v.path, v.trainable) for v in plain.weights]
    with pytest.raises(fl.PlanError, match=r"quantized weights 'base/d2/kernel'"):
        fl.apply(plain, fl.Plan().unfreeze("base"))
    assert [(v.path, v.trainable) for v in plain.weights] == flags


def _embedding_model():
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(10, 4, name="emb"),
                              keras.layers.Flatten(), keras.layers.Dense(1, name="head")], name="e")
    model.compile(optimizer="adam", loss="mse")
    return model


def test_lora_on_an_embedding_trains_adapters_keeps_the_table_frozen_merges_and_reloads(tmp_path):
    model = _embedding_model()
    ids = np.random.default_rng(0).integers(0, 10, (16, 4)).astype("int32")
    target = np.random.default_rng(1).random((16, 1)).astype("float32")
    fl.apply(model, fl.Plan().freeze("**").lora("emb", rank=2).unfreeze("emb", "head"))
    emb = model.get_layer("emb")
    assert sorted(v.name for v in model.trainable_weights) == ["bias", "kernel", "lora_embeddings_a", "lora_embeddings_b"]
    table = numpy(emb.embeddings)
    model.fit(ids, target, epochs=2, verbose=0)
    assert fl.report(model).rows[1].lora.startswith("r2")
    fl.save_adapters(model, tmp_path / "emb.npz")
    fresh = _embedding_model()
    fresh.set_weights([w for v, w in zip(model.weights, model.get_weights()) if "lora" not in v.name])
    assert fl.load_adapters(fresh, tmp_path / "emb.npz") == ["emb"]
    np.testing.assert_allclose(fresh.predict(ids, verbose=0), model.predict(ids, verbose=0), rtol=1e-6)
    assert not np.allclose(numpy(emb.embeddings), table)  # the adapters moved what the layer computes
    before = model.predict(ids, verbose=0)
    assert fl.merge_adapters(model) == ["emb"]
    np.testing.assert_allclose(model.predict(ids, verbose=0), before, rtol=1e-5, atol=1e-6)
    assert not any("lora" in v.name for v in model.weights)
