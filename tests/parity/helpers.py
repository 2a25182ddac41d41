"""What the tests share besides the model builders of `model_zoo`: variable values as
NumPy arrays, a short deterministic `fit`, and running frostline in a fresh process.

Every function works on JAX, TensorFlow and PyTorch; the parity suite beside this file
runs on all three.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

import frostline as fl
from model_zoo import input_shape

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"  # run as processes, never imported by the tests
STEPS = 4  # batches in an epoch of fit(): 16 samples, batch size 4


def edit(config: dict, changes: dict) -> dict:
    """`config` with each `"a.0.b": value` of `changes` set (a digit is a list index), or
    deleted where the value is None; edited in place and returned."""
    for path, value in changes.items():
        *keys, last = path.split(".")
        target = config
        for key in keys:
            target = target[int(key)] if key.isdigit() else target[key]
        last = int(last) if last.isdigit() else last
        if value is None:
            del target[last]
        else:
            target[last] = value
    return config


def numpy(x) -> np.ndarray:
    """A copy of a variable's (or a tensor's) value as a NumPy array."""
    return keras.ops.convert_to_numpy(x.value if hasattr(x, "value") else x).copy()


def values(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable of the model by its frostline path (`base/stem/kernel`), as NumPy."""
    return {
        (f"{n.path}/{v.name}" if n.path else v.name): numpy(v)
        for n in fl.LayerTree(model) for v in n.variables
    }


def changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> set[str]:
    """The paths whose values differ between two `values()` snapshots."""
    return {k for k in before if not np.array_equal(before[k], after[k])}


def trainable_paths(model: keras.Model) -> list[str]:
    """The paths of `model.trainable_weights`, in the tree's order."""
    ids = {id(v) for v in model.trainable_weights}
    return [f"{n.path}/{v.name}" for n in fl.LayerTree(model) for v in n.weights if id(v) in ids]


def arrays(n: int, x_shape: tuple[int, ...] = (6,), y_width: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` random float32 inputs of `x_shape` and regression targets of `y_width`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *x_shape)).astype("float32")
    y = rng.normal(size=(n, y_width)).astype("float32")
    return x, y


def data(model: keras.Model, n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and targets shaped for a `model_zoo` model."""
    return arrays(n, input_shape(model), model.outputs[0].shape[-1], seed)


def compiled(model: keras.Model, optimizer=None) -> keras.Model:
    """The model compiled for regression, with Adam(0.01) unless told otherwise."""
    model.compile(optimizer=optimizer or keras.optimizers.Adam(0.01), loss="mse")
    return model


def fit(model: keras.Model, epochs: int = 1, *, n: int = 16, batch_size: int = 4, **fit_kwargs):
    """`model.fit` on `data(model, n)`, in order: 16 samples in batches of 4 are 4 steps an epoch."""
    x, y = data(model, n)
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=False, **fit_kwargs)


def adam_slots(optimizer, variable):
    """Adam's first and second moment variables for `variable`."""
    i = optimizer._get_variable_index(variable)
    return optimizer._momentums[i], optimizer._velocities[i]


def run_frostline(*args, cwd=None, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m frostline ARGS` in a fresh process on JAX. `env` overrides variables of
    this process's environment; a value of None removes one."""
    merged = {**os.environ, "KERAS_BACKEND": "jax"}
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return subprocess.run([sys.executable, "-m", "frostline", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=merged, cwd=cwd)
