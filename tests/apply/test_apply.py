import keras
import numpy as np
import pytest

import frostline as fl
from frostline.apply.apply import FlagSnapshot
from model_zoo import MODEL_BUILDERS, applications, nested, sequential, shared
from parity.helpers import changed, compiled, fit, numpy, values


def fit_twice(model):
    """Two epochs of 4 steps with a large learning rate: whatever trains moves."""
    fit(compiled(model, keras.optimizers.Adam(0.05)), epochs=2, n=32, batch_size=8)


def test_frozen_weights_do_not_move_in_a_real_fit():
    model = nested()
    fl.apply(model, fl.Plan().freeze("base").unfreeze("base/block5/conv2"))
    before = values(model)
    fit_twice(model)
    assert changed(before, values(model)) == {
        "base/block5/conv2/kernel", "base/block5/conv2/bias", "head/kernel", "head/bias",
    }


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "applications" else n for n in sorted(MODEL_BUILDERS)]
)
def test_trainable_weights_are_exactly_the_resolved_set(name):
    model = MODEL_BUILDERS[name]()
    plan = fl.Plan().freeze("**").unfreeze("[-1:]")
    report = fl.apply(model, plan)
    resolution = fl.resolve(fl.Plan(), fl.LayerTree(model))
    assert [id(v) for v in model.trainable_weights] == [id(v) for v in resolution.trainable_variables]
    last = model.layers[-1]
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in last.trainable_weights}
    assert report.trainable_params == sum(int(np.prod(v.shape)) for v in last.trainable_weights)


def test_unfreeze_inside_a_frozen_container_sets_the_container_trainable():
    model = nested()
    base = model.get_layer("base")
    base.trainable = False
    fl.apply(model, fl.Plan().unfreeze("conv1"))
    conv1 = base.get_layer("block5").get_layer("conv1")
    assert base.trainable and base.get_layer("block5").trainable
    assert not base.get_layer("stem").trainable
    assert {id(v) for v in base.trainable_weights} == {id(v) for v in conv1.weights}


def test_container_trainable_above_frozen_children():
    model = nested()
    for layer in model.get_layer("base").layers:
        layer.trainable = False
    assert model.get_layer("base").trainable  # Keras: container True, children False
    report = fl.apply(model, fl.Plan().unfreeze("stem"))
    assert [w.path for w in model.get_layer("base").trainable_weights] == [
        w.path for w in model.get_layer("base").get_layer("stem").weights
    ]
    assert report.rows[1].state == "partial"


def test_freeze_when_the_flag_already_reads_false_still_freezes_the_variables():
    # A container whose flag reads False while its variables still train: Keras's setter
    # short-cuts nothing here, but flags set by other code can disagree like this.
    model = nested()
    block = model.get_layer("base").get_layer("block5")
    block._trainable = False
    for v in block.weights:
        v.trainable = True
    fl.apply(model, fl.Plan().freeze("block5"))
    assert not any(id(v) in {id(w) for w in model.trainable_weights} for v in block.weights)


def test_shared_layer_frozen_everywhere_in_the_model():
    model = shared()
    fl.apply(model, fl.Plan().freeze("left"))
    common = model.get_layer("left").layers[0]
    trainable = {id(v) for v in model.trainable_weights}
    assert not {id(v) for v in common.weights} & trainable
    assert not model.get_layer("right").layers[0].trainable
    assert [w.path for w in model.get_layer("right").trainable_weights] == [
        w.path for w in model.get_layer("right").layers[1].weights
    ]


def test_slice_matches_keras_users_hand_freezing():
    by_hand, planned = sequential(), sequential()
    for layer in by_hand.layers[:-2]:
        layer.trainable = False
    fl.apply(planned, fl.Plan().freeze("[:-2]"))
    assert [w.path for w in planned.trainable_weights] == [w.path for w in by_hand.trainable_weights]
    assert [l.trainable for l in planned.layers] == [l.trainable for l in by_hand.layers]


@pytest.mark.slow
def test_freezing_a_whole_applications_base_matches_keras():
    by_hand, planned = applications(), applications()
    by_hand.layers[0].trainable = False
    report = fl.apply(planned, fl.Plan().freeze(planned.layers[0].name))
    assert [w.path for w in planned.trainable_weights] == [w.path for w in by_hand.trainable_weights]
    assert report.trainable_params == sum(int(np.prod(w.shape)) for w in by_hand.trainable_weights)
    assert report.frozen_params == sum(int(np.prod(w.shape)) for w in by_hand.non_trainable_weights)


def test_failed_plan_changes_no_flag():
    model = nested()
    model.get_layer("head").trainable = False
    before = FlagSnapshot(fl.LayerTree(model))
    with pytest.raises(fl.PlanError, match="matched no layer"):
        fl.apply(model, fl.Plan().freeze("base").unfreeze("conv1").freeze("not_a_layer"))
    assert FlagSnapshot(fl.LayerTree(model)) == before


def test_misspelled_name_in_a_list_changes_nothing():
    model = sequential()
    before = FlagSnapshot(fl.LayerTree(model))
    with pytest.raises(fl.PlanError, match=r"'d4'.*Did you mean 'd[1-3]'"):
        fl.apply(model, fl.Plan().freeze(["d1", "d2", "d4"]))
    assert FlagSnapshot(fl.LayerTree(model)) == before
    assert all(v.trainable for v in model.weights if "moving" not in v.name)


def test_snapshot_restores_what_keras_setters_changed():
    model = nested()
    snapshot = FlagSnapshot(fl.LayerTree(model))
    model.get_layer("base").trainable = False
    model.get_layer("head").trainable = False
    assert FlagSnapshot(fl.LayerTree(model)) != snapshot
    snapshot.restore()
    assert FlagSnapshot(fl.LayerTree(model)) == snapshot
    assert len(model.trainable_weights) == 10  # stem, stem_bn, conv1, conv2, head: 2 each


def test_apply_rejects_what_is_not_a_plan():
    with pytest.raises(TypeError, match="Expected a frostline Plan"):
        fl.apply(nested(), {"rules": [{"freeze": "base"}]})


def test_frozen_batch_norm_keeps_its_statistics_in_fit():
    model = nested()
    fl.apply(model, fl.Plan().freeze("stem_bn"))
    bn = model.get_layer("base").get_layer("stem_bn")
    before = [numpy(v) for v in bn.weights]
    fit_twice(model)
    assert all(np.array_equal(b, numpy(v)) for b, v in zip(before, bn.weights))


def test_unfreezing_a_base_with_a_normalization_layer_leaves_its_integer_count_alone():
    # Normalization keeps an int32 `count` next to its mean and variance (EfficientNet's
    # base has one): it never trains, and it is not a quantized kernel.
    x = np.random.default_rng(0).random((16, 8, 8, 3), dtype="float32")
    inputs = keras.Input((8, 8, 3))
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    base = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(norm(inputs)), name="base")
    model = keras.Sequential([keras.Input((8, 8, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, name="head")])
    fl.apply(model, fl.Plan().freeze("base"))
    fl.apply(model, fl.Plan().unfreeze("base"))
    assert sorted(v.path for v in model.trainable_weights) == sorted(
        v.path for v in [*base.get_layer("conv").weights, *model.get_layer("head").weights])
    assert not any(v.trainable for v in norm.weights)
