"""The activation cache on keras-hub tasks: token-id dict inputs and sequence dimensions
that are None in the graph cache and train as plain fit does; a preprocessor attached, or
a backbone called by keyword, falls back to plain fit with the reason."""

import keras
import numpy as np
import pytest

import frostline as fl
from hub_zoo import bert_classifier, gemma3_lm, texts, token_ids

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(make, x, y, plan, cache, capsys):
    keras.backend.clear_session()  # the same layer names in both runs
    keras.utils.set_random_seed(1)
    model = make()
    before = [np.array(v) for v in model.weights]
    run = fl.FineTune(model, [fl.Phase("head", epochs=2, plan=plan, cache=cache)],
                      optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    capsys.readouterr()
    run.fit(x, y, batch_size=4, shuffle=False, verbose=0, phase_lines=True)
    line = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("cache:")][0].strip()
    return model, before, [np.array(v) for v in model.weights], line


def _head_plan():
    return fl.Plan().freeze("**").unfreeze("re:.*(pooled_dense|logits)")


def _compare(make, x, y, plan, capsys):
    _, before, cached, line = _fit(make, x, y, plan, "auto", capsys)
    _, _, plain, _ = _fit(make, x, y, plan, False, capsys)
    assert any(not np.array_equal(b, a) for b, a in zip(before, cached)), "the fit changed nothing"
    for c, p in zip(cached, plain):
        np.testing.assert_allclose(c, p, rtol=1e-5, atol=1e-7)
    return line, max(float(np.max(np.abs(c - p))) if c.size else 0.0 for c, p in zip(cached, plain))


def test_bert_classifier_on_token_ids_caches_and_trains_as_plain_fit(capsys):
    x, y = token_ids()
    line, diff = _compare(lambda: bert_classifier(preprocessor=False), x, y, _head_plan(), capsys)
    assert line.startswith("cache: memory,"), line
    print(f"bert without preprocessor: {line}; max difference {diff:g}")


def test_the_frozen_part_takes_the_models_own_dict_input():
    model = bert_classifier(preprocessor=False)
    fl.apply(model, _head_plan())
    split = fl.frost_split(model)
    x, _ = token_ids(n=4)
    out = split.frozen.predict(x, verbose=0)
    assert all(o.shape[0] == 4 for o in (out if isinstance(out, list) else [out]))
    np.testing.assert_allclose(split.remainder.predict(out, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_bert_classifier_with_a_preprocessor_falls_back_with_the_reason(capsys):
    x, y = texts()
    line, diff = _compare(lambda: bert_classifier(preprocessor=True), x, y, _head_plan(), capsys)
    assert line == "cache: off, plain fit: the model preprocesses its inputs inside fit (keras-hub preprocessor).", line
    print(f"bert with preprocessor: {line}; max difference {diff:g}")


def test_an_explicit_cache_with_a_preprocessor_is_not_cacheable():
    model = bert_classifier(preprocessor=True)
    x, y = texts()
    run = fl.FineTune(model, [fl.Phase("head", epochs=2, plan=_head_plan(), cache="memory")], loss=LOSS)
    with pytest.raises(fl.NotCacheable, match="preprocessor"):
        run.fit(x, y, batch_size=4, verbose=0)


def test_a_backbone_called_by_keyword_falls_back_with_the_reason(capsys):
    x, _ = token_ids(vocabulary=40, segments=False)
    y = np.roll(x["token_ids"], -1, axis=1)
    plan = fl.Plan().freeze("re:.*(token_embedding|decoder_block_0)")
    line, diff = _compare(gemma3_lm, x, y, plan, capsys)
    assert line.startswith("cache: off, plain fit: the nested model") and "keyword arguments" in line, line
    with pytest.raises(fl.NotCacheable, match="keyword arguments"):
        model = gemma3_lm()
        fl.apply(model, plan)
        fl.frost_split(model)
    print(f"gemma3: {line}; max difference {diff:g}")
