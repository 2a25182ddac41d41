"""Parity: `fl.scoped`, a freeze undone on exit."""

import warnings

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.apply.apply import FlagSnapshot
from model_zoo import nested
from parity.helpers import changed, compiled, fit, values


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
