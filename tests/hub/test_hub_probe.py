"""`fl.probe` on keras-hub tasks: the preprocessor runs first, the cuts are the backbone's
transformer blocks, raw text as arrays and as a tf.data dataset give the same probe, and the
schedule `from_probe` gives trains."""

import keras
import numpy as np

import frostline as fl
from hub_zoo import bert_classifier, image_classifier, images, texts, token_ids


def _weights(model):
    return [np.array(v) for v in model.weights]


def test_bert_cuts_are_its_transformer_blocks_and_raw_text_is_preprocessed():
    model = bert_classifier()
    x, y = texts(32)
    validation = texts(16, seed=1)
    before = _weights(model)
    result = fl.probe(model, x, y, validation_data=validation, epochs=2, batch_size=8)
    cuts = [row["cut"] for row in result.rows]
    assert [c for c in cuts if "transformer_layer" in c] == [
        "bert_backbone/transformer_layer_0", "bert_backbone/transformer_layer_1"]
    assert result.base == ["bert_backbone"]
    frozen = [row["frozen_params"] for row in result.rows]
    assert frozen == sorted(frozen) and frozen[-1] == model.backbone.count_params()
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model)))

    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    held_out = tf.data.Dataset.from_tensor_slices(validation).batch(8)
    streamed = fl.probe(model, dataset, validation_data=held_out, epochs=2, batch_size=8)
    assert [r["cut"] for r in streamed.rows] == cuts
    np.testing.assert_allclose([r["score"] for r in streamed.rows], [r["score"] for r in result.rows])
    np.testing.assert_allclose([r["loss"] for r in streamed.rows], [r["loss"] for r in result.rows], rtol=1e-4)


def test_token_ids_without_a_preprocessor_and_the_schedule_trains_above_the_cut():
    model = bert_classifier(preprocessor=False)
    x, y = token_ids(32)
    result = fl.probe(model, x, y, validation_data=token_ids(16, seed=1), epochs=2, batch_size=8,
                      cuts=["transformer_layer_0"])
    assert [row["cut"] for row in result.rows] == ["bert_backbone/transformer_layer_0"]
    phases = fl.schedules.from_probe(result, head_epochs=1, finetune_epochs=1, finetune_learning_rate=1e-2)
    below = model.backbone.get_layer("transformer_layer_0")
    above = model.backbone.get_layer("transformer_layer_1")
    start = {layer.name: _weights(layer) for layer in (below, above)}
    run = fl.FineTune(model, phases, optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    run.fit(x, y, batch_size=8, verbose=0, shuffle=False)
    assert all(np.array_equal(a, b) for a, b in zip(start[below.name], _weights(below)))
    assert any(not np.array_equal(a, b) for a, b in zip(start[above.name], _weights(above)))


def test_image_classifier_with_its_preprocessor():
    model = image_classifier()
    x, y = images(16)
    result = fl.probe(model, x, y, validation_data=images(8, seed=1), epochs=2, batch_size=8)
    assert result.rows and result.base == ["res_net_backbone"]
    assert all(row["features"] > 0 for row in result.rows)
