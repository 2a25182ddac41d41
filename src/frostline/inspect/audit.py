"""The audit: proof that frozen weights did not move.

A fingerprint is two 32-bit weighted checksums of each variable's bits, computed on the
device where the variable lives; checking it moves one small array to the host, never
the weights. Reference values, kept only to say by how much a variable changed, go to a
temporary file by default and are read only when a check fails.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Literal

import keras
import numpy as np

from frostline.errors import FrostlineValueError, FrozenWeightsChanged
from frostline.model.modes import layer_mode
from frostline.model.tree import LayerTree

__all__ = ["FreezeAudit", "Fingerprint", "audited_variables", "fingerprint"]

Reference = Literal["disk", "memory"] | None

# Each element's weight is index * a + b with a even and b odd: always odd, so invertible
# modulo 2**32, and a change in one element, a sign-bit flip included, changes the sum.
_MULTIPLIERS = ((np.int32(1013904226), np.int32(97)), (np.int32(198677742), np.int32(-1028477379)))


def _bits(value) -> object:
    dtype = keras.backend.standardize_dtype(value.dtype)
    if dtype in ("float32", "float64"):
        return keras.ops.view(value, "int32")
    if dtype in ("float16", "bfloat16"):
        return keras.ops.cast(keras.ops.view(value, "int16"), "int32")
    return keras.ops.cast(value, "int32")


def _checksums(value) -> object:
    bits = keras.ops.reshape(_bits(value), (-1,))
    index = keras.ops.arange(keras.ops.shape(bits)[0], dtype="int32")
    sums = [keras.ops.sum(bits * (index * a + b)) for a, b in _MULTIPLIERS]
    return keras.ops.stack(sums)


def audited_variables(model: keras.layers.Layer) -> list[tuple[str, keras.Variable]]:
    """What the audit watches: `(path, variable)` for every frozen weight, and for every
    state variable (BatchNormalization's moving mean and variance) of a layer that runs
    in inference mode."""
    tree = LayerTree(model)
    trainable = tree.effective_trainable_ids()
    watched = []
    for node in tree:
        for v in node.weights:
            if id(v) not in trainable:
                watched.append((node.variable_path(v), v))
        if layer_mode(node.layer, inside=node.containers) == "inference":
            watched.extend((node.variable_path(v), v) for v in node.states)
    return watched


class Fingerprint:
    """On-device checksums of variables, taken now, to be checked later.

    Args:
        variables: `(path, variable)` pairs to watch.
        reference: Where to keep the values, to report the largest absolute change of
            a variable that changed: `"disk"` (a temporary file, the default),
            `"memory"`, or `None` (changes are reported as `nan`).
    """

    def __init__(self, variables: list[tuple[str, keras.Variable]], *, reference: Reference = "disk"):
        self._directory = None
        if reference not in ("disk", "memory", None):
            raise FrostlineValueError(
                f"Expected reference='disk', 'memory' or None. Received: reference={reference!r}"
            )
        self.paths = [p for p, _ in variables]
        self._variables = [v for _, v in variables]
        self._checksums = self._compute()
        self._directory = None
        self._memory: list[np.ndarray] | None = None
        if reference == "memory":
            self._memory = [keras.ops.convert_to_numpy(v.value).copy() for v in self._variables]
        elif reference == "disk" and self._variables:
            self._directory = tempfile.mkdtemp(prefix="frostline-audit-")
            for i, v in enumerate(self._variables):
                np.save(os.path.join(self._directory, f"{i}.npy"), keras.ops.convert_to_numpy(v.value))

    def _compute(self) -> np.ndarray:
        if not self._variables:
            return np.zeros((0, 2), np.int32)
        stacked = keras.ops.stack([_checksums(v.value) for v in self._variables])
        return keras.ops.convert_to_numpy(stacked)

    def _reference(self, i: int) -> np.ndarray | None:
        if self._memory is not None:
            return self._memory[i]
        if self._directory is not None:
            return np.load(os.path.join(self._directory, f"{i}.npy"))
        return None

    def changes(self) -> dict[str, float]:
        """`{path: largest absolute change}` of every watched variable that changed."""
        now = self._compute()
        changed = np.nonzero(np.any(now != self._checksums, axis=1))[0]
        out = {}
        for i in changed:
            before = self._reference(int(i))
            if before is None:
                out[self.paths[i]] = math.nan
                continue
            after = keras.ops.convert_to_numpy(self._variables[i].value)
            diff = np.abs(after.astype(np.float64) - before.astype(np.float64))
            out[self.paths[i]] = float(np.nanmax(diff)) if diff.size else math.nan
        return out

    def verify(self) -> None:
        """Raises `FrozenWeightsChanged` if any watched variable changed."""
        changes = self.changes()
        if changes:
            listed = "; ".join(f"{p} (largest absolute change {c:.3g})" for p, c in changes.items())
            raise FrozenWeightsChanged(
                f"{len(changes)} variable(s) that should not have changed did: {listed}. "
                "Something trained or assigned them behind the plan: a hand-set "
                "`trainable` flag that was not synced (use fl.FreezeGuard), a custom "
                "train step, or code that assigns weights.",
                changes,
            )

    def close(self) -> None:
        """Deletes the reference values kept on disk."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __del__(self):
        self.close()


def fingerprint(model: keras.layers.Layer, *, reference: Reference = "disk") -> Fingerprint:
    """Fingerprints the frozen weights and inference-mode states of `model` now.

    For your own training loops: take it before, call `.verify()` after.

    Args:
        model: A Keras model.
        reference: As in `Fingerprint`. Defaults to `"disk"`.

    Returns:
        A `Fingerprint`.

    Example:

    >>> import keras, frostline as fl
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    >>> _ = fl.apply(model, fl.Plan().freeze("d"))
    >>> fp = fl.fingerprint(model)
    >>> _ = model.get_layer("d").bias.assign([1.0])
    >>> fp.changes()
    {'d/bias': 1.0}
    """
    return Fingerprint(audited_variables(model), reference=reference)


class FreezeAudit(keras.callbacks.Callback):
    """A Keras callback: frozen weights must stay bit-identical through `fit`.

    Fingerprints every frozen variable, and the moving statistics of every layer that
    runs in inference mode, at the start of training, and checks them after each epoch
    and at the end. Any change raises `FrozenWeightsChanged`, naming each variable and
    its largest absolute change. Put `fl.FreezeGuard()` before it in `callbacks`, so
    that the audit sees the trainable set the guard settles.

    Args:
        reference: As in `Fingerprint`. Defaults to `"disk"`.
    """

    def __init__(self, *, reference: Reference = "disk"):
        super().__init__()
        self.reference = reference
        self.fingerprint: Fingerprint | None = None

    def on_train_begin(self, logs=None):
        self.fingerprint = fingerprint(self.model, reference=self.reference)

    def on_epoch_end(self, epoch, logs=None):
        if self.fingerprint is not None:
            self.fingerprint.verify()

    def on_train_end(self, logs=None):
        if self.fingerprint is not None:
            try:
                self.fingerprint.verify()
            finally:
                self.fingerprint.close()
