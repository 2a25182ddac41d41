"""Parity: `fl.FineTune` phases, the activation cache and data parallelism."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import frostline as fl
from model_zoo import applications, nested, skip_model
from parity.helpers import SCRIPTS, STEPS, changed, data, values

BACKEND = keras.backend.backend()


def test_fine_tune_trains_what_each_phase_plans_with_one_optimizer():
    model = nested()
    run = fl.FineTune(model, [
        fl.Phase("head", epochs=1, plan=fl.Plan().freeze("base"), learning_rate=1e-2),
        fl.Phase("top", epochs=1, plan=fl.Plan().unfreeze("block5").lr("block5", 0.5), learning_rate=1e-3),
    ], loss="mse")
    start = values(model)
    x, y = data(model)
    history = run.fit(x, y, batch_size=4, verbose=0, shuffle=False)
    assert history.epoch == [0, 1]
    moved = changed(start, values(model))
    assert moved == {"head/kernel", "head/bias", "base/block5/conv1/kernel", "base/block5/conv1/bias",
                     "base/block5/conv2/kernel", "base/block5/conv2/bias"}
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * STEPS


@pytest.mark.parametrize("shape", ["sequential", "skip", pytest.param("applications", marks=pytest.mark.slow)])
def test_cached_phase_trains_the_same_weights_as_plain_fit(shape):
    build = {"sequential": nested, "skip": skip_model, "applications": applications}[shape]
    keras.utils.set_random_seed(0)
    probe = build()
    frozen = {"sequential": "base", "skip": ["frozen1", "frozen2"], "applications": probe.layers[0].name}[shape]
    x, y = data(probe)
    results = []
    for cache in ("memory", False):
        keras.utils.set_random_seed(0)
        model = build()
        run = fl.FineTune(model, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze(frozen), cache=cache)],
                          optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        run.fit(x, y, batch_size=4, verbose=0, shuffle=False)
        results.append(values(model))
    cached, plain = results
    assert cached.keys() == plain.keys()
    for key in cached:
        np.testing.assert_allclose(cached[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _dropout_head() -> keras.Model:
    """`nested()` with a Dropout (no seed) between the base and the head: after the cut."""
    base = nested().get_layer("base")
    return keras.Sequential([keras.Input((6,)), base, keras.layers.Dropout(0.5, name="drop"),
                             keras.layers.Dense(3, name="head")], name="outer")


@pytest.mark.parametrize("cache, shuffle", [("memory", False), ("memory", True), ("disk", False)])
def test_a_cached_phase_draws_the_dropout_masks_and_order_of_plain_fit(cache, shuffle):
    """Computing the cache draws from the global generators (on torch, predict's DataLoader
    takes a seed from torch's, where an unseeded Dropout and a shuffled fit draw too);
    the phase's fit starts from the state plain fit starts from."""
    x, y = data(nested())
    results = []
    for mode in (cache, False):
        keras.utils.set_random_seed(0)
        model = _dropout_head()
        run = fl.FineTune(model, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache=mode)],
                          optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                          cache_memory_limit=64 if mode == "disk" else 2**30)
        start = values(model)
        run.fit(x, y, batch_size=4, verbose=0, shuffle=shuffle)
        after = values(model)
        assert changed(start, after) == {"head/kernel", "head/bias"}, mode
        results.append(after)
    cached, plain = results
    for key in cached:
        np.testing.assert_allclose(cached[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_streaming_disk_cache_trains_the_same_weights_as_plain_fit():
    keras.utils.set_random_seed(0)
    x, y = data(nested())
    results = []
    for cache in ("disk", False):
        keras.utils.set_random_seed(0)
        model = nested()
        run = fl.FineTune(model, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache=cache)],
                          optimizer=keras.optimizers.Adam(1e-2), loss="mse", cache_memory_limit=64)
        history = run.fit(x, y, batch_size=4, validation_data=(x[:8], y[:8]), verbose=0, shuffle=False)
        results.append((values(model), history.history["val_loss"]))
    (cached, cached_loss), (plain, plain_loss) = results
    for key in cached:
        np.testing.assert_allclose(cached[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(cached_loss, plain_loss, rtol=1e-5)


def test_data_parallelism_where_keras_has_it(tmp_path):
    """JAX: keras.distribution (4 devices: tests/train/test_distribute.py); TensorFlow: a
    MirroredStrategy over 2 logical CPUs, in a fresh process; PyTorch: a clear error."""
    if BACKEND == "torch":
        with pytest.raises(ValueError, match="needs the JAX backend; Keras does not support it on 'torch'"):
            fl.data_parallel(2)
        with pytest.raises(ValueError, match="Keras does not support data parallelism on the 'torch' backend"):
            fl.FineTune(nested(), [fl.Phase("all", epochs=1)], loss="mse", distribution=object())
        return
    if BACKEND == "jax":
        results = []
        for distribution in (None, fl.data_parallel(1)):
            keras.utils.set_random_seed(0)
            model = nested()
            x, y = data(model)
            fl.FineTune(model, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"))], loss="mse",
                        distribution=distribution).fit(x, y, batch_size=4, verbose=0, shuffle=False)
            results.append(values(model))
        for key in results[0]:
            np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)
        return
    script = SCRIPTS / "mirrored_run.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=900,
                          cwd=SCRIPTS)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["replicas"] == 2
    saved = {name: dict(np.load(tmp_path / f"{name}.npz")) for name in ("single", "mirrored", "mirrored_cached")}
    for name in ("mirrored", "mirrored_cached"):
        run = result["runs"][name]
        assert run["devices"] == 2 and "data parallel over 2 devices" in run["lines"][0]
        for key, value in saved["single"].items():
            np.testing.assert_allclose(saved[name][key], value, rtol=1e-4, atol=1e-6, err_msg=f"{name}: {key}")
        for phase, frozen in run["frozen"].items():
            for path in frozen:
                assert np.array_equal(saved[name][f"{phase}|{path}"], saved[name][f"initial|{path}"]), path
    assert "memory" in result["runs"]["mirrored_cached"]["lines"][1]
    resumed = dict(np.load(tmp_path / "resumed.npz"))
    for key in resumed:  # interrupted in phase 2 and resumed: the uninterrupted weights
        np.testing.assert_allclose(resumed[key], saved["mirrored_cached"][key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert "was made outside the strategy's scope" in result["errors"]["outside_scope"]
    assert result["errors"]["outside_scope_untouched"] is True
    assert "On TensorFlow, pass a tf.distribute strategy" in result["errors"]["data_parallel"]
