import keras
import numpy as np
import pytest

import frostline as fl
from model_zoo import nested
from parity.helpers import arrays

X, Y = arrays(16)


def test_two_phase_runs_the_keras_guide_recipe():
    model = nested()
    phases = fl.schedules.two_phase(base="base", head_epochs=1, finetune_epochs=1)
    run = fl.FineTune(model, phases, loss="mse")
    bn = model.get_layer("base").get_layer("stem_bn")
    stats = keras.ops.convert_to_numpy(bn.moving_mean.value).copy()
    history = run.fit(X, Y, batch_size=8, verbose=0)
    assert [p["name"] for p in history.phases] == ["head", "finetune"]
    assert bn.trainable  # unfrozen in phase 2 ...
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean.value), stats)  # ... in inference mode
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-5)


def test_gradual_unfreeze_unfreezes_top_block_first():
    model = nested()
    phases = fl.schedules.gradual_unfreeze(blocks=["base/stem", "base/block5"], epochs_per_block=1)
    assert [p.name for p in phases] == ["head", "unfreeze base/block5", "unfreeze base/stem"]
    run = fl.FineTune(model, phases, loss="mse")
    run.fit(X, Y, batch_size=8, verbose=0)
    trainable = lambda name: run.reports[name].trainable_params
    assert trainable("head") < trainable("unfreeze base/block5") < trainable("unfreeze base/stem")


def test_layerwise_decay_defaults_to_top_level_blocks():
    model = nested()
    plan = fl.schedules.layerwise_decay(model, decay=0.5)
    assert plan == fl.Plan().lr("base", 0.5).lr("head", 1.0)
    model.compile(optimizer="adam", loss="mse")
    report = fl.apply(model, plan)
    rows = {r.path: r.lr for r in report.rows}
    assert rows["base/stem"] == "x0.5" and rows["head"] == "x1"
    with pytest.raises(ValueError, match=r"decay in \(0, 1\]"):
        fl.schedules.layerwise_decay(model, decay=0)
