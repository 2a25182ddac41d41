"""When and how a `FineTune` phase caches the frozen part's activations: the same
result as plain `fit`, or plain `fit` and the reason."""

import keras
import numpy as np
import pytest

import frostline as fl
from model_zoo import applications, nested, skip_model
from parity.helpers import arrays, values


def two_runs(build, x, y, phases, **fit_kwargs):
    """The same phases with cache='auto' (or as given) and with cache=False."""
    results = []
    for cache in ("auto", False):
        keras.utils.set_random_seed(0)
        model = build()
        phased = [fl.Phase(p.name, epochs=p.epochs, plan=p.plan, learning_rate=p.learning_rate, cache=cache if p.cache == "auto" else p.cache)
                  for p in phases]
        run = fl.FineTune(model, phased, optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        history = run.fit(x, y, batch_size=8, verbose=0, shuffle=False, **fit_kwargs)
        results.append((model, history))
    return results


def assert_same_weights(a, b):
    weights_a, weights_b = values(a), values(b)
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        np.testing.assert_allclose(weights_a[key], weights_b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_cached_phases_train_the_same_weights_and_losses_as_plain_fit():
    x, y = arrays(32)
    phases = [fl.Phase("head", epochs=3, plan=fl.Plan().freeze("base")), fl.Phase("top", epochs=2, plan=fl.Plan().unfreeze("block5"))]
    (cached, h1), (plain, h2) = two_runs(nested, x, y, phases, validation_data=(x[:8], y[:8]))
    assert_same_weights(cached, plain)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(h1.history["val_loss"], h2.history["val_loss"], rtol=1e-5)


def test_streaming_disk_cache_trains_the_same_weights_as_plain_fit(tmp_path, capsys, monkeypatch):
    # 40 samples x 5 values x 4 bytes = 800 bytes of activations, a limit of 100: computed
    # in chunks of one batch, read a batch at a time, with validation and sample weights.
    from frostline.cache.policy import DiskActivations

    chunks, batches = [], []
    original_write, original_read = DiskActivations.write, DiskActivations.read

    def write(self, start, columns):  # records each chunk's rows, then writes them
        chunks.append(len(columns[0]))
        return original_write(self, start, columns)

    def read(self, indices):
        out = original_read(self, indices)
        batches.append(len(out[0]))
        return out

    monkeypatch.setattr(DiskActivations, "write", write)
    monkeypatch.setattr(DiskActivations, "read", read)
    x, y = arrays(40)
    weights = np.random.default_rng(1).random(40).astype("float32")
    results = []
    for cache in ("auto", False):
        keras.utils.set_random_seed(0)
        model = nested()
        run = fl.FineTune(model, [fl.Phase("head", epochs=3, plan=fl.Plan().freeze("base"), cache=cache)],
                          optimizer=keras.optimizers.Adam(1e-2), loss="mse", cache_memory_limit=100, cache_dir=tmp_path)
        history = run.fit(x, y, batch_size=8, sample_weight=weights, validation_data=(x[:16], y[:16], weights[:16]),
                          validation_batch_size=4, verbose=0, shuffle=False, phase_lines=True)
        results.append((model, history))
    assert "cache: disk, 1,120 bytes" in capsys.readouterr().out  # (40 + 16) samples x 20 bytes
    # One batch per chunk (a quarter of the limit holds less than a batch): 5 of training
    # data, 4 of validation data; every read is one batch (8 or 4 rows), never the file:
    # 3 epochs of both, and one more training batch that Keras reads to learn the shapes.
    assert chunks == [8] * 5 + [4] * 4
    assert set(batches) == {8, 4} and sum(batches) == 3 * 40 + 3 * 16 + 8
    (cached, h1), (plain, h2) = results
    assert_same_weights(cached, plain)
    np.testing.assert_allclose(h1.history["val_loss"], h2.history["val_loss"], rtol=1e-5)
    assert list(tmp_path.iterdir()) == []


def test_cached_phase_with_a_skip_connection_across_the_cut():
    # tests/cache/test_split.py checks where this model is cut.
    x, y = arrays(32)
    phases = [fl.Phase("a", epochs=3, plan=fl.Plan().freeze(["frozen1", "frozen2"]))]
    (cached, _), (plain, _) = two_runs(skip_model, x, y, phases)
    assert_same_weights(cached, plain)


@pytest.mark.slow
def test_cached_phase_with_a_nested_applications_base():
    x, y = arrays(16, (32, 32, 3))
    build = applications
    base = lambda m: m.layers[0].name  # noqa: E731
    keras.utils.set_random_seed(0)
    name = base(build())
    phases = [fl.Phase("head", epochs=2, plan=fl.Plan().freeze(name)), fl.Phase("top", epochs=2, plan=fl.Plan().unfreeze(f"{name}/block_16_*"))]
    (cached, _), (plain, _) = two_runs(build, x, y, phases)
    assert_same_weights(cached, plain)


def test_auto_falls_back_with_a_reason(capsys):
    x, y = arrays(16)
    model = nested()
    run = fl.FineTune(model, [fl.Phase("one", epochs=1, plan=fl.Plan().freeze("base")), fl.Phase("all", epochs=2, plan=fl.Plan().unfreeze("base"))],
                      loss="mse")
    run.fit(x, y, batch_size=8, verbose=0, phase_lines=True)
    out = capsys.readouterr().out
    assert "cache: off, plain fit: a phase of one epoch computes each activation once anyway." in out
    assert "cache: off, plain fit: nothing frozen and deterministic comes before" in out


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_explicit_cache_that_cannot_apply_is_an_error(mode):
    x, y = arrays(16)
    run = fl.FineTune(nested(), [fl.Phase("all", epochs=2, cache=mode)], loss="mse")
    with pytest.raises(fl.NotCacheable, match=f"Phase 'all' asks for cache='{mode}', which cannot apply: nothing frozen"):
        run.fit(x, y, verbose=0)


def test_float16_disk_cache_halves_the_bytes_and_is_removed_after_the_phase(tmp_path, capsys):
    x, y = arrays(40)
    run = fl.FineTune(nested(), [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache="disk", cache_dtype="float16")],
                      loss="mse", cache_dir=tmp_path)
    run.fit(x, y, batch_size=8, verbose=0, phase_lines=True)
    out = capsys.readouterr().out
    assert "cache: disk, 400 bytes of activations" in out  # 40 samples x 5 values x 2 bytes
    assert list(tmp_path.iterdir()) == []  # removed after the phase


def test_auto_goes_to_disk_above_the_memory_limit(capsys):
    x, y = arrays(40)
    run = fl.FineTune(nested(), [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"))], loss="mse", cache_memory_limit=100)
    run.fit(x, y, batch_size=8, verbose=0, phase_lines=True)
    assert "cache: disk, 800 bytes" in capsys.readouterr().out


def test_cached_phase_keeps_learning_rate_multipliers_and_callbacks_see_the_whole_model(tmp_path):
    x, y = arrays(32)
    model = nested()
    seen = []

    class Seen(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.name)

    conv1 = model.get_layer("base").get_layer("block5").get_layer("conv1")
    run = fl.FineTune(model, [fl.Phase("top", epochs=3, plan=fl.Plan().freeze("base").unfreeze("block5").lr("conv1", 0.0),
                                       cache="memory", callbacks=(Seen(),))], loss="mse")
    before = keras.ops.convert_to_numpy(conv1.kernel.value).copy()
    run.fit(x, y, batch_size=8, verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(conv1.kernel.value), before)  # multiplier 0 held
    assert seen == ["outer"] * 3  # the phase's callbacks see the user's model, not the remainder


def test_user_early_stopping_ends_a_cached_run():
    x, y = arrays(32)
    run = fl.FineTune(nested(), [fl.Phase("a", epochs=20, plan=fl.Plan().freeze("base"), learning_rate=1e-9, cache="memory"), fl.Phase("b", epochs=2)],
                      loss="mse")
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1.0)
    history = run.fit(x, y, batch_size=8, verbose=0, callbacks=[stop])
    assert [p["name"] for p in history.phases] == ["a"] and history.phases[0]["epochs"] < 20


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_integer_inputs_passed_through_the_frost_line_keep_their_dtype(cache):
    # Token ids read by a trainable Embedding are cut tensors; float16 would round 4099.
    def build():
        ids = keras.Input((3,), dtype="int32", name="ids")
        features = keras.Input((4,), name="features")
        frozen = keras.layers.Dense(2, name="base")(features)
        embedded = keras.layers.Flatten()(keras.layers.Embedding(5000, 2, name="embed")(ids))
        out = keras.layers.Dense(1, name="head")(keras.layers.Concatenate()([frozen, embedded]))
        return keras.Model({"ids": ids, "features": features}, out)

    rng = np.random.default_rng(0)
    x = {"ids": np.full((16, 3), 4099, "int32"), "features": rng.normal(size=(16, 4)).astype("float32")}
    x["ids"][:, 1] = rng.integers(0, 5000, 16)
    y = rng.normal(size=(16, 1)).astype("float32")
    changed = []
    for mode in (cache, False):
        keras.utils.set_random_seed(0)
        model = build()
        before = model.get_layer("embed").get_weights()[0]
        run = fl.FineTune(model, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache=mode,
                                           cache_dtype="float16")],
                          optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        run.fit(x, y, batch_size=8, verbose=0, shuffle=False)
        after = model.get_layer("embed").get_weights()[0]
        changed.append((np.flatnonzero(np.any(after != before, axis=1)), after))
    # The same embedding rows trained (ids rounded to float16 would train row 4100, not
    # 4099); the values agree up to the frozen Dense's float16-rounded output.
    np.testing.assert_array_equal(changed[0][0], changed[1][0])
    assert 4099 in changed[0][0]
    np.testing.assert_allclose(changed[0][1], changed[1][1], atol=1e-4)


@pytest.mark.parametrize("where", ["split", "compute"])
def test_auto_falls_back_when_the_cut_or_its_activations_fail_unexpectedly(where, capsys, monkeypatch, tmp_path):
    from frostline.cache import policy

    def broken(*args, **kwargs):
        raise RuntimeError("something Keras did not expect\nsecond line")

    monkeypatch.setattr(policy, "frost_split" if where == "split" else "compute_on_disk", broken)
    x, y = arrays(16)
    keras.utils.set_random_seed(0)
    model = nested()
    run = fl.FineTune(model, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"))], loss="mse",
                      cache_memory_limit=10, cache_dir=tmp_path)
    run.fit(x, y, batch_size=8, verbose=0, phase_lines=True, shuffle=False)
    subject = "the frost line could not be cut" if where == "split" else "the activations could not be computed"
    assert f"cache: off, plain fit: {subject} (RuntimeError: something Keras did not expect).\n" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    keras.utils.set_random_seed(0)
    plain = nested()
    fl.FineTune(plain, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache=False)],
                loss="mse").fit(x, y, batch_size=8, verbose=0, shuffle=False)
    assert_same_weights(model, plain)
    explicit = fl.FineTune(nested(), [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache="disk")], loss="mse")
    with pytest.raises(fl.NotCacheable, match="RuntimeError: something Keras did not expect"):
        explicit.fit(x, y, batch_size=8, verbose=0)


def _sequence_model(carrier):
    def build():
        inputs = keras.Input((6, 4))
        h = keras.layers.Dense(4, name="embed")(inputs)
        h = carrier()(h) if not isinstance(carrier(), keras.layers.MultiHeadAttention) else carrier()(h, h)
        h = keras.layers.Flatten()(h)
        return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    return build


@pytest.mark.parametrize("carrier", [
    lambda: keras.layers.LSTM(4, dropout=0.5, return_sequences=True, name="carrier"),
    lambda: keras.layers.MultiHeadAttention(2, 2, dropout=0.5, name="carrier"),
    lambda: keras.layers.TimeDistributed(keras.layers.Dropout(0.5), name="carrier"),
], ids=["LSTM(dropout)", "MultiHeadAttention(dropout)", "TimeDistributed(Dropout)"])
def test_a_frozen_layer_that_carries_its_own_dropout_is_not_cached_through(carrier, capsys):
    x = np.random.default_rng(0).normal(size=(16, 6, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 3)).astype("float32")
    phases = [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("embed").freeze("carrier"))]
    capsys.readouterr()
    (cached, _), (plain, _) = two_runs(_sequence_model(carrier), x, y, phases)
    assert_same_weights(cached, plain)
    model = _sequence_model(carrier)()
    fl.apply(model, phases[0].plan)
    assert [name for name, _ in fl.frost_split(model).cut] != [], "the cut"
    assert fl.frost_split(model).cut[0][1] == (None, 6, 4)  # before the carrier, after embed


def test_a_layer_inside_a_container_in_inference_mode_runs_as_the_container_makes_it(capsys):
    # The container passes training=False down to its Dropout even where the Dropout's
    # own rule was turned off; a cached phase must train what that gives.
    def build():
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, name="d1")(inputs)
        h = keras.layers.Dropout(0.5, name="drop")(h)
        base = keras.Model(inputs, keras.layers.Dense(8, name="d2")(h), name="base")
        return keras.Sequential([keras.Input((6,)), base, keras.layers.Dense(3, name="head")])

    plan = fl.Plan().freeze("base/d1").inference("base").inference("base/drop", enabled=False)
    x, y = arrays(32)
    (cached, _), (plain, _) = two_runs(build, x, y, [fl.Phase("p", epochs=3, plan=plan)])
    assert_same_weights(cached, plain)
    model = build()
    fl.apply(model, plan)
    assert {r.path: r.mode for r in fl.report(model).rows}["base/drop"] == "inference"
    # Keras's Functional call would give the Dropout the remainder's training=True: the
    # container stays whole, and with its trainable d2 nothing before it is cached.
    with pytest.raises(fl.NotCacheable, match="nothing frozen and deterministic"):
        fl.frost_split(model)


def test_the_reason_for_a_python_list_of_samples_says_what_to_pass():
    from frostline.cache.policy import FitInputs, reason_not_to_cache

    model = nested()
    fl.apply(model, fl.Plan().freeze("base"))
    x, y = arrays(8)
    assert reason_not_to_cache(model, FitInputs(x.tolist(), y), epochs=2) == \
        "the data is a Python list: pass a NumPy array (np.array(x)) to cache."
    assert reason_not_to_cache(model, FitInputs(x, y), epochs=2) is None
