"""fl.apply on keras-hub tasks: traced functions reset, LoRA kept frozen where it belongs."""

import keras
import numpy as np

import frostline as fl
from frostline.model.adapters import base_variable
from hub_zoo import bert_classifier, gemma_lm, prompt, texts


def test_generate_after_apply_equals_generate_after_a_recompile():
    lm = gemma_lm()
    lm.compile(sampler="greedy")
    fl.apply(lm, fl.Plan().freeze("gemma_backbone/decoder_block_0"))
    before = lm.generate(prompt(), stop_token_ids=None)["token_ids"]
    # The same number of trainable variables, other ones: a stale jitted generate
    # function would map the values onto the wrong variables.
    fl.apply(lm, fl.Plan().unfreeze("gemma_backbone/decoder_block_0").freeze("gemma_backbone/decoder_block_1"))
    after_apply = lm.generate(prompt(), stop_token_ids=None)["token_ids"]
    lm.compile(sampler="greedy")
    after_recompile = lm.generate(prompt(), stop_token_ids=None)["token_ids"]
    np.testing.assert_array_equal(after_apply, after_recompile)
    np.testing.assert_array_equal(after_apply, before)  # the weights did not change


def test_unfreezing_a_backbone_after_its_own_enable_lora_keeps_adapted_kernels_frozen():
    model = bert_classifier(preprocessor=False)
    model.backbone.enable_lora(4)
    adapted = [v for v in model.weights if v.name.startswith("lora_")]
    fl.apply(model, fl.Plan().unfreeze("bert_backbone"))
    trainable = {id(v) for v in model.trainable_weights}
    assert all(id(v) in trainable for v in adapted)
    attention = [n.layer for n in fl.LayerTree(model) if n.name in ("query", "value")]
    assert len(attention) == 4 and all(not base_variable(l).trainable for l in attention)


def test_lora_on_attention_trains_adapters_and_the_head_only():
    model = bert_classifier(preprocessor=True)
    x, y = texts()
    fl.apply(model, fl.Plan().freeze("**").lora("re:.*/(query|value)", rank=2).unfreeze("logits"))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    changed = {v.path for v in model.weights if np.any(keras.ops.convert_to_numpy(v) != before[v.path])}
    assert changed and all("lora_kernel" in p or p.startswith("logits/") for p in changed)
    report = fl.report(model)
    assert sum(r.lora != "-" for r in report.rows) == 4  # query and value in two blocks


def test_a_saved_bert_loads_with_the_frozen_set_it_was_saved_with(tmp_path):
    model = bert_classifier(preprocessor=False)
    fl.apply(model, fl.Plan().freeze("bert_backbone"))
    model.backbone.enable_lora(2)  # outside the plan, after it: the file must still say so
    saved = sorted(v.path for v in model.trainable_weights)
    model.save(tmp_path / "bert.keras")
    plain = keras.saving.load_model(tmp_path / "bert.keras", compile=False)
    loaded = fl.load_model(tmp_path / "bert.keras", compile=False)
    # keras-hub rebuilds the backbone's layers trainable: plain Keras loses the frozen set.
    assert sorted(v.path for v in plain.trainable_weights) != saved
    assert sorted(v.path for v in loaded.trainable_weights) == saved
