"""The backend-parity suite: the same scenarios on JAX, TensorFlow and PyTorch.

`scripts/test.sh` runs this file once per backend, each in its own process. Every
scenario asserts on weights before and after a real `fit`.
"""

import warnings

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.apply.apply import FlagSnapshot
from model_zoo import applications, input_shape, nested, sequential, shared

BACKEND = keras.backend.backend()
STEPS = 4  # batches per epoch: 16 samples, batch size 4


def values(model):
    tree = fl.LayerTree(model)
    return {
        (f"{n.path}/{v.name}" if n.path else v.name): keras.ops.convert_to_numpy(v.value).copy()
        for n in tree for v in n.variables
    }


def trainable_paths(model):
    ids = {id(v) for v in model.trainable_weights}
    return [f"{n.path}/{v.name}" for n in fl.LayerTree(model) for v in n.weights if id(v) in ids]


def changed(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


def data(model, n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *input_shape(model))).astype("float32")
    y = rng.normal(size=(n, model.outputs[0].shape[-1])).astype("float32")
    return x, y


def compiled(model, optimizer=None):
    model.compile(optimizer=optimizer or keras.optimizers.Adam(0.01), loss="mse")
    return model


def fit(model, epochs=1, **kwargs):
    x, y = data(model)
    model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, shuffle=False, **kwargs)


def adam_slots(optimizer, variable):
    i = optimizer._get_variable_index(variable)
    return optimizer._momentums[i], optimizer._velocities[i]


def test_unfreeze_after_fit_takes_effect_and_keeps_adam_state():
    model = compiled(nested())
    fl.apply(model, fl.Plan().freeze("base"))
    fit(model)
    opt = model.optimizer
    head = model.get_layer("head")
    m, v = adam_slots(opt, head.kernel)
    m_before, v_before = keras.ops.convert_to_numpy(m.value).copy(), keras.ops.convert_to_numpy(v.value).copy()
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == STEPS

    fl.apply(model, fl.Plan().unfreeze("base/block5"))
    m2, v2 = adam_slots(opt, head.kernel)
    assert m2 is m and v2 is v  # the head's moments are the ones from before
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(m2.value), m_before)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(v2.value), v_before)
    conv1 = model.get_layer("base").get_layer("block5").get_layer("conv1")
    fresh_m, _ = adam_slots(opt, conv1.kernel)
    assert not np.any(keras.ops.convert_to_numpy(fresh_m.value))  # fresh slots for the unfrozen

    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {
        "base/block5/conv1/kernel", "base/block5/conv1/bias",
        "base/block5/conv2/kernel", "base/block5/conv2/bias",
        "head/kernel", "head/bias",
    }
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 2 * STEPS


def test_freeze_after_fit_keeps_newly_frozen_weights_bit_identical():
    model = compiled(nested())
    fit(model)
    slots_before = len(model.optimizer.variables)
    fl.apply(model, fl.Plan().freeze("base"))
    assert len(model.optimizer.variables) < slots_before  # no memory for frozen weights
    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {"head/kernel", "head/bias"}
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * STEPS


def test_hand_set_flags_take_effect_with_freeze_guard():
    model = compiled(nested())
    fit(model)
    model.get_layer("base").trainable = False
    before = values(model)
    fit(model, callbacks=[fl.FreezeGuard()])
    assert changed(before, values(model)) == {"head/kernel", "head/bias"}
    model.get_layer("base").get_layer("stem").trainable = True
    model.get_layer("base").trainable = True
    for layer in model.get_layer("base").layers:
        layer.trainable = layer.name == "stem"
    before = values(model)
    fit(model, callbacks=[fl.FreezeGuard()])
    assert changed(before, values(model)) == {
        "base/stem/kernel", "base/stem/bias", "head/kernel", "head/bias",
    }


def test_apply_from_a_callback_between_epochs_takes_effect_in_the_next_epoch():
    model = compiled(nested())
    fl.apply(model, fl.Plan().freeze("base"))
    snapshots = []

    class Unfreeze(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(values(self.model))
            if epoch == 0:
                fl.apply(self.model, fl.Plan().unfreeze("stem"))

    fit(model, epochs=2, callbacks=[Unfreeze()])
    first, second = snapshots
    assert "base/stem/kernel" in changed(first, second)
    assert "base/block5/conv1/kernel" not in changed(first, second)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * STEPS


def test_freeze_guard_raise_names_what_changed_and_changes_nothing():
    model = compiled(nested())
    fit(model)
    model.get_layer("head").trainable = False
    before = values(model)
    with pytest.raises(fl.StaleTrainableError, match=r"now frozen: \['head/kernel', 'head/bias'\]") as e:
        fit(model, callbacks=[fl.FreezeGuard(mode="raise")])
    assert e.value.now_frozen == ["head/kernel", "head/bias"]
    assert not changed(before, values(model))
    fit(model, callbacks=[fl.FreezeGuard()])  # and the model still trains afterwards


def test_scoped_freeze_leaves_the_other_model_free_to_train_a_shared_layer():
    common = keras.layers.Dense(4, name="common")
    a = compiled(keras.Sequential([keras.Input((6,)), common, keras.layers.Dense(2, name="a_head")], name="a"))
    b = compiled(keras.Sequential([keras.Input((6,)), common, keras.layers.Dense(2, name="b_head")], name="b"))
    flags_before = FlagSnapshot(fl.LayerTree(a))
    x, y = np.ones((8, 6), "float32"), np.ones((8, 2), "float32")
    with fl.scoped(a, fl.Plan().freeze("**")):
        kernel = keras.ops.convert_to_numpy(common.kernel.value).copy()
        with warnings.catch_warnings():
            # TensorFlow and PyTorch say so when nothing trains; JAX does not.
            warnings.filterwarnings("ignore", "The model does not have any trainable weights")
            a.fit(x, y, batch_size=4, verbose=0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(common.kernel.value), kernel)
    assert FlagSnapshot(fl.LayerTree(a)) == flags_before
    kernel = keras.ops.convert_to_numpy(common.kernel.value).copy()
    b.fit(x, y, batch_size=4, verbose=0)
    assert not np.array_equal(keras.ops.convert_to_numpy(common.kernel.value), kernel)


def test_scoped_restores_flags_after_an_exception():
    model = compiled(nested())
    fit(model)
    flags = FlagSnapshot(fl.LayerTree(model))
    n_vars = len(model.optimizer.variables)
    with pytest.raises(KeyError):
        with fl.scoped(model, fl.Plan().freeze("base")):
            raise KeyError("boom")
    assert FlagSnapshot(fl.LayerTree(model)) == flags
    assert len(model.optimizer.variables) == n_vars
    before = values(model)
    fit(model)
    assert "base/stem/kernel" in changed(before, values(model))


def test_batch_norm_in_inference_mode_trains_gamma_beta_keeps_statistics():
    model = compiled(nested())
    report = fl.apply(model, fl.Plan().freeze("**").unfreeze("stem_bn").inference("stem_bn"))
    assert {r.path: r.mode for r in report.rows}["base/stem_bn"] == "inference"
    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {"base/stem_bn/gamma", "base/stem_bn/beta"}
    fl.apply(model, fl.Plan().inference("stem_bn", enabled=False))
    before = values(model)
    fit(model)
    assert {"base/stem_bn/moving_mean", "base/stem_bn/moving_variance"} <= changed(before, values(model))


def test_freezing_base_layers_but_the_last_five_like_keras_users():
    base = sequential()
    model = compiled(keras.Sequential([keras.Input((6,)), base, keras.layers.Dense(2, name="head")], name="m"))
    fl.apply(model, fl.Plan().freeze("seq[:-2]"))
    expected_frozen = {l.name for l in base.layers[:-2]}
    assert {l.name for l in base.layers if not l.trainable} == expected_frozen
    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {"seq/d3/kernel", "seq/d3/bias", "head/kernel", "head/bias"}


def test_a_misspelled_name_in_a_list_changes_nothing():
    model = compiled(nested())
    fit(model)
    flags = FlagSnapshot(fl.LayerTree(model))
    n_vars = len(model.optimizer.variables)
    with pytest.raises(fl.PlanError, match=r"'conv3'.*Did you mean"):
        fl.apply(model, fl.Plan().freeze(["stem", "conv1", "conv3"]))
    assert FlagSnapshot(fl.LayerTree(model)) == flags
    assert len(model.optimizer.variables) == n_vars
    before = values(model)
    fit(model)
    assert "base/stem/kernel" in changed(before, values(model))


def test_freezing_the_whole_base_of_a_keras_applications_model():
    model = compiled(applications())
    base = model.layers[0]
    fit(model)
    fl.apply(model, fl.Plan().freeze(base.name))
    before = values(model)
    fit(model)
    assert changed(before, values(model)) == {"head/kernel", "head/bias"}


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


def test_freeze_audit_catches_a_change_behind_frostlines_back():
    model = compiled(nested())
    fl.apply(model, fl.Plan().freeze("base"))
    stem = model.get_layer("base").get_layer("stem")

    class Tamper(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            stem.bias.assign(stem.bias.value + 0.5)

    audit = fl.FreezeAudit()
    with pytest.raises(fl.FrozenWeightsChanged, match=r"base/stem/bias \(largest absolute change 0\.5\)") as e:
        fit(model, callbacks=[Tamper(), audit])
    assert list(e.value.changes) == ["base/stem/bias"]
    fit(model, callbacks=[fl.FreezeAudit()])  # an honest fit passes


def test_shared_layer_frozen_in_one_model_by_keras_freezes_the_other():
    # What Keras does without a scope, for contrast with the scoped test above.
    model = shared()
    fl.apply(model, fl.Plan().freeze("left"))
    right = model.get_layer("right")
    assert not right.layers[0].trainable


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_learning_rate_multiplier_scales_each_update_exactly(name):
    def head_delta(multiplier):
        keras.utils.set_random_seed(0)
        optimizer = {
            "Adam": lambda: keras.optimizers.Adam(0.01),
            "AdamW": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
            "SGD": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        }[name]()
        model = compiled(nested(), optimizer)
        fl.apply(model, fl.Plan().freeze("base").lr("head", multiplier))
        before = values(model)
        x, y = data(model)
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)  # one step: exactly linear
        after = values(model)
        assert changed(before, after) == {"head/kernel", "head/bias"}
        return after["head/kernel"] - before["head/kernel"]

    np.testing.assert_allclose(head_delta(0.25), 0.25 * head_delta(1.0), rtol=1e-4, atol=1e-7)


def test_fine_tune_runner_two_phases():
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


@pytest.mark.parametrize("shape", ["sequential", "skip", "applications"])
def test_cached_phase_trains_the_same_weights_as_plain_fit(shape):
    from model_zoo import skip_model

    build = {"sequential": nested, "skip": skip_model, "applications": applications}[shape]
    keras.utils.set_random_seed(0)
    probe = build()
    frozen = {"sequential": "base", "skip": ["frozen1", "frozen2"], "applications": probe.layers[0].name}[shape]
    x, y = data(probe)
    results = []
    for cache in ("memory", False):
        keras.utils.set_random_seed(0)
        model = build()
        run = fl.FineTune(model, [fl.Phase("head", 2, fl.Plan().freeze(frozen), cache=cache)],
                          optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        run.fit(x, y, batch_size=4, verbose=0, shuffle=False)
        results.append(values(model))
    cached, plain = results
    assert cached.keys() == plain.keys()
    for key in cached:
        np.testing.assert_allclose(cached[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_streaming_disk_cache_trains_the_same_weights_as_plain_fit():
    keras.utils.set_random_seed(0)
    x, y = data(nested())
    results = []
    for cache in ("disk", False):
        keras.utils.set_random_seed(0)
        model = nested()
        run = fl.FineTune(model, [fl.Phase("head", 2, fl.Plan().freeze("base"), cache=cache)],
                          optimizer=keras.optimizers.Adam(1e-2), loss="mse", cache_memory_limit=64)
        history = run.fit(x, y, batch_size=4, validation_data=(x[:8], y[:8]), verbose=0, shuffle=False)
        results.append((values(model), history.history["val_loss"]))
    (cached, cached_loss), (plain, plain_loss) = results
    for key in cached:
        np.testing.assert_allclose(cached[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(cached_loss, plain_loss, rtol=1e-5)


def test_data_parallelism_where_keras_has_it(tmp_path):
    """JAX: keras.distribution (4 devices: tests/test_distribution.py); TensorFlow: a
    MirroredStrategy over 2 logical CPUs, in a fresh process; PyTorch: a clear error."""
    import json
    import os
    import subprocess
    import sys

    if BACKEND == "torch":
        with pytest.raises(ValueError, match="needs the JAX backend; Keras does not support it on 'torch'"):
            fl.data_parallel(2)
        with pytest.raises(ValueError, match="Keras does not support data parallelism on the 'torch' backend"):
            fl.FineTune(nested(), [fl.Phase("all", 1)], loss="mse", distribution=object())
        return
    if BACKEND == "jax":
        results = []
        for distribution in (None, fl.data_parallel(1)):
            keras.utils.set_random_seed(0)
            model = nested()
            x, y = data(model)
            fl.FineTune(model, [fl.Phase("head", 2, fl.Plan().freeze("base"))], loss="mse",
                        distribution=distribution).fit(x, y, batch_size=4, verbose=0, shuffle=False)
            results.append(values(model))
        for key in results[0]:
            np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)
        return
    script = os.path.join(os.path.dirname(__file__), "scripts", "mirrored_run.py")
    done = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(script))
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
