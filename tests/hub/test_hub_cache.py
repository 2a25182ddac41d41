"""The activation cache on keras-hub tasks: token-id dict inputs, sequence dimensions that
are None in the graph, a task's preprocessor (run once before the frozen part) and a
backbone called by keyword cache and train as plain fit does; a preprocessor that draws
random numbers falls back to plain fit with the reason."""

import keras
import keras_hub
import numpy as np
import pytest

import frostline as fl
from hub_zoo import VOCAB, bert_classifier, gemma3_lm, gpt2_lm, image_classifier, images, letters, texts, token_ids

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(make, x, y, plan, cache, capsys, **fit_kwargs):
    keras.backend.clear_session()  # the same layer names in both runs
    keras.utils.set_random_seed(1)
    model = make()
    before = [np.array(v) for v in model.weights]
    run = fl.FineTune(model, [fl.Phase("head", epochs=2, plan=plan, cache=cache)],
                      optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    capsys.readouterr()
    run.fit(x, y, verbose=0, phase_lines=True, **{"shuffle": False, "batch_size": 4, **fit_kwargs})
    line = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("cache:")][0].strip()
    return model, before, [np.array(v) for v in model.weights], line


# Cached and plain runs are compared weight for weight, so the layers after the cut draw
# no random numbers: on PyTorch an unseeded Dropout draws from torch's global generator,
# which plain keras-hub fit (a grain pipeline) and a fit on arrays (a torch DataLoader,
# one draw per epoch) advance differently. The models are built with dropout=0.0; with
# keras-hub's 0.1 the cut stops before the first dropout (see test_hub_report.py).
def _head_plan():
    return fl.Plan().freeze("**").unfreeze("re:.*(pooled_dense|logits)")


def _compare(make, x, y, plan, capsys, **fit_kwargs):
    _, before, cached, line = _fit(make, x, y, plan, "auto", capsys, **fit_kwargs)
    _, _, plain, _ = _fit(make, x, y, plan, False, capsys, **fit_kwargs)
    assert any(not np.array_equal(b, a) for b, a in zip(before, cached)), "the fit changed nothing"
    for c, p in zip(cached, plain):
        np.testing.assert_allclose(c, p, rtol=1e-5, atol=1e-6)  # as tests/cache: float32 reordering
    return line, max(float(np.max(np.abs(c - p))) if c.size else 0.0 for c, p in zip(cached, plain))


def test_bert_classifier_on_token_ids_caches_and_trains_as_plain_fit(capsys):
    x, y = token_ids()
    line, diff = _compare(lambda: bert_classifier(preprocessor=False, dropout=0.0), x, y, _head_plan(), capsys)
    assert line.startswith("cache: memory,"), line
    print(f"bert without preprocessor: {line}; max difference {diff:g}")


@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")  # Keras's, in the plain run
def test_a_task_fed_arrays_is_not_shuffled_by_its_cache_as_its_own_fit_does_not_shuffle(capsys):
    # keras-hub's fit batches arrays into a dataset, which Keras does not shuffle, so
    # shuffle=True (fit's default) leaves their order; the cached phase does the same.
    x, y = token_ids()
    line, _ = _compare(lambda: bert_classifier(preprocessor=False, dropout=0.0), x, y, _head_plan(), capsys,
                       shuffle=True)
    assert line.startswith("cache: memory,"), line


def test_the_frozen_part_takes_the_models_own_dict_input():
    model = bert_classifier(preprocessor=False)
    fl.apply(model, _head_plan())
    split = fl.frost_split(model)
    x, _ = token_ids(n=4)
    out = split.frozen.predict(x, verbose=0)
    assert all(o.shape[0] == 4 for o in (out if isinstance(out, list) else [out]))
    np.testing.assert_allclose(split.remainder.predict(out, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_bert_classifier_with_a_preprocessor_caches_after_preprocessing(capsys):
    x, y = texts()
    line, diff = _compare(lambda: bert_classifier(preprocessor=True, dropout=0.0), x, y, _head_plan(), capsys)
    assert line.startswith("cache: memory,") and line.endswith(
        "after the model's preprocessor (BertTextClassifierPreprocessor)"), line
    print(f"bert with preprocessor: {line}; max difference {diff:g}")


def test_a_causal_lm_whose_preprocessor_makes_the_labels_caches(capsys):
    plan = fl.Plan().freeze("re:.*(token_embedding|position_embedding|transformer_layer_0)")
    line, diff = _compare(gpt2_lm, letters(), None, plan, capsys)
    assert line.startswith("cache: memory,") and "GPT2CausalLMPreprocessor" in line, line
    print(f"gpt2 with preprocessor: {line}; max difference {diff:g}")


@pytest.mark.parametrize("validation", ["(x,)", "x"])
def test_a_causal_lm_with_validation_text_alone_caches(validation, capsys):
    held_out = letters(4, seed=1)
    plan = fl.Plan().freeze("re:.*(token_embedding|position_embedding|transformer_layer_0)")
    _, _, cached, line = _fit(gpt2_lm, letters(), None, plan, "auto", capsys,
                              validation_data=(held_out,) if validation == "(x,)" else held_out)
    _, _, plain, _ = _fit(gpt2_lm, letters(), None, plan, False, capsys, validation_data=(held_out,))
    assert line.startswith("cache: memory,"), line
    for c, p in zip(cached, plain):
        np.testing.assert_allclose(c, p, rtol=1e-5, atol=1e-6)


def test_an_image_classifier_with_a_preprocessor_caches_its_frozen_backbone(capsys):
    x, y = images()
    plan = fl.Plan().freeze("res_net_backbone")
    line, diff = _compare(image_classifier, x, y, plan, capsys)
    assert line.startswith("cache: memory,") and "(8,)" in line and "ResNetImageClassifierPreprocessor" in line, line
    print(f"resnet with preprocessor: {line}; max difference {diff:g}")


def _masked_lm():
    backbone = bert_classifier(preprocessor=False).backbone
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB)
    pre = keras_hub.models.BertMaskedLMPreprocessor(tokenizer, sequence_length=8)
    return keras_hub.models.BertMaskedLM(backbone, preprocessor=pre)


def test_a_preprocessor_that_draws_random_numbers_is_not_cached(capsys):
    x, _ = texts()
    plan = fl.Plan().freeze("re:.*(embedding|pooled_dense).*")  # the masked LM does not use the pooled output
    _, before, after, line = _fit(_masked_lm, x, None, plan, "auto", capsys)
    assert any(not np.array_equal(b, a) for b, a in zip(before, after)), "the fit changed nothing"
    # Its mask generator draws with TensorFlow's random ops: two runs over the same
    # batch differ.
    assert line == ("cache: off, plain fit: the model's preprocessor (BertMaskedLMPreprocessor) gives different "
                    "results for the same samples (random masking or augmentation): every pass of fit preprocesses "
                    "them anew."), line
    run = fl.FineTune(_masked_lm(), [fl.Phase("head", epochs=2, plan=plan, cache="memory")], loss=LOSS)
    with pytest.raises(fl.NotCacheable, match="different results for the same samples"):
        run.fit(x, batch_size=4, verbose=0)


def test_a_backbone_called_by_keyword_caches(capsys):
    x, _ = token_ids(vocabulary=40, segments=False)
    y = np.roll(x["token_ids"], -1, axis=1)
    plan = fl.Plan().freeze("re:.*(token_embedding|decoder_block_0)")
    line, diff = _compare(gemma3_lm, x, y, plan, capsys)
    assert line.startswith("cache: memory,"), line
    print(f"gemma3: {line}; max difference {diff:g}")


def test_a_cached_phase_logs_the_metrics_the_task_compiled_itself_with():
    x, y = texts()
    histories = []
    for cache in ("auto", False):
        keras.backend.clear_session()
        keras.utils.set_random_seed(1)
        run = fl.FineTune(bert_classifier(preprocessor=True, dropout=0.0),
                          [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("bert_backbone"), cache=cache)], loss=LOSS)
        histories.append(run.fit(x, y, batch_size=4, shuffle=False, verbose=0, validation_data=(x[:4], y[:4])).history)
    cached, plain = histories
    assert sorted(cached) == sorted(plain) == ["loss", "sparse_categorical_accuracy", "val_loss",
                                               "val_sparse_categorical_accuracy"]
    for key in plain:
        np.testing.assert_allclose(cached[key], plain[key], rtol=1e-5)


def _text_dataset(kind):
    x, y = texts()
    if kind == "tf.data":
        import tensorflow as tf
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    import grain
    return grain.MapDataset.source([(x[i], y[i]) for i in range(len(x))]).batch(4)


# Keras warns on the first epoch of a grain dataset (its length is learnt by running out).
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
@pytest.mark.parametrize("kind", ["tf.data", "grain"])
def test_a_dataset_of_raw_text_caches_after_the_tasks_preprocessor(kind, capsys):
    if kind == "grain" and keras.backend.backend() == "tensorflow":
        pytest.skip("Keras's TensorFlow trainer runs extra steps on a grain dataset of unknown length; "
                    "see docs/caching.md")
    make = lambda: bert_classifier(preprocessor=True, dropout=0.0)  # noqa: E731
    _, before, cached, line = _fit(make, _text_dataset(kind), None, _head_plan(), "auto", capsys, batch_size=None)
    _, _, plain, _ = _fit(make, _text_dataset(kind), None, _head_plan(), False, capsys, batch_size=None)
    assert "checked to give the same samples on two passes" in line and line.endswith(
        "after the model's preprocessor (BertTextClassifierPreprocessor)"), line
    assert any(not np.array_equal(b, a) for b, a in zip(before, cached)), "the fit changed nothing"
    for c, p in zip(cached, plain):
        np.testing.assert_allclose(c, p, rtol=1e-5, atol=1e-6)
