"""The audit: proof that frozen weights did not move.

A fingerprint is a keyed 64-bit digest of each variable's bits, with a secret key drawn
for the fingerprint. A variable in host memory (every variable on a CPU) is hashed where
it lies with keyed BLAKE2b, a cryptographic hash, a thread per core. A variable on an
accelerator is digested on its device: every element, mixed with its position and the
key, goes through a nonlinear 32-bit mixer (MurmurHash3's finalizer), and the mixed
values are summed, in two lanes with independent keys; only the two sums move to the
host, never the weights. Either way a change that does not know the key (a bug, a stray
update) passes with a chance of about 2**-64, however many elements it touches; a linear
checksum, by contrast, is passed by changes that cancel out. Reference values, kept only
to say by how much a variable changed, go to a temporary file by default, as raw bytes
(any dtype), and are read only when a check fails.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import os
import secrets
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

# MurmurHash3's 32-bit finalizer constants (0x85ebca6b, 0xc2b2ae35), as signed int32.
_MIX = (-2048144789, -1028477387)


def _int32(value: int) -> int:
    """`value`'s low 32 bits as a signed int32."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _keys() -> np.ndarray:
    """Two lanes of (input key, odd position key), drawn anew for each fingerprint."""
    return np.array([[_int32(secrets.randbits(32)), _int32(secrets.randbits(32) | 1)] for _ in range(2)], np.int32)


def _bits(value) -> object:
    """The variable's bits as int32 elements: 32- and 64-bit types viewed (a 64-bit
    element as two), narrower ones widened."""
    dtype = keras.backend.standardize_dtype(value.dtype)
    size = np.dtype(dtype).itemsize if dtype != "bfloat16" else 2
    if size >= 4 and dtype != "bool":
        return keras.ops.view(value, "int32")
    if dtype in ("float16", "bfloat16"):
        return keras.ops.cast(keras.ops.view(value, "int16"), "int32")
    return keras.ops.cast(value, "int32")


def _shift_right(x, bits: int):
    """Logical right shift of int32 `x` (the backends shift arithmetically)."""
    return keras.ops.bitwise_and(keras.ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _mix(x):
    """MurmurHash3's finalizer on int32 elements: every input bit affects every output bit."""
    x = keras.ops.bitwise_xor(x, _shift_right(x, 16)) * _MIX[0]
    x = keras.ops.bitwise_xor(x, _shift_right(x, 13)) * _MIX[1]
    return keras.ops.bitwise_xor(x, _shift_right(x, 16))


def _digest(value, keys):
    """The two lanes' sums for one variable's `value`, with `keys` a (2, 2) int32 tensor."""
    bits = keras.ops.reshape(_bits(value), (-1,))
    index = keras.ops.arange(keras.ops.shape(bits)[0], dtype="int32")
    return keras.ops.stack([keras.ops.sum(_mix(keras.ops.bitwise_xor(bits, keys[lane, 0]) + index * keys[lane, 1]))
                            for lane in range(2)])


_COMPILED: dict[str, object] = {}


def _digest_function():
    """`_digest`, compiled once per variable shape on JAX (run op by op, each of its
    operations would be compiled for every new shape)."""
    backend = keras.backend.backend()
    if backend not in _COMPILED:
        if backend == "jax":
            import jax

            _COMPILED[backend] = jax.jit(_digest)
        else:
            _COMPILED[backend] = _digest
    return _COMPILED[backend]


def _on_host(value) -> bool:
    """Whether the variable's value lies in host memory."""
    backend = keras.backend.backend()
    if backend == "jax":
        return all(d.platform == "cpu" for d in value.devices())
    if backend == "torch":
        return value.device.type == "cpu"
    if backend == "tensorflow":
        return "GPU" not in value.device.upper() and "TPU" not in value.device.upper()
    return backend == "numpy"


def _host_digest(value, key: bytes) -> np.ndarray:
    """Keyed BLAKE2b of a host value's bytes, as two int32 lanes."""
    digest = hashlib.blake2b(_raw(value), key=key, digest_size=8).digest()
    return np.frombuffer(digest, dtype=np.int32)


def _raw(value) -> np.ndarray:
    """A host copy of the variable's value as raw bytes (any dtype, bfloat16 included)."""
    array = np.ascontiguousarray(keras.ops.convert_to_numpy(value))
    return array.reshape(-1).view(np.uint8)


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
    """Keyed digests of variables, taken where they live now, to be checked later.

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
        self._keys = _keys()
        self._key = secrets.token_bytes(32)
        self._checksums = self._compute()
        self._directory = None
        self._memory: list[np.ndarray] | None = None
        if reference == "memory":
            self._memory = [_raw(v.value).copy() for v in self._variables]
        elif reference == "disk" and self._variables:
            self._directory = tempfile.mkdtemp(prefix="frostline-audit-")
            for i, v in enumerate(self._variables):
                _raw(v.value).tofile(os.path.join(self._directory, f"{i}.bin"))

    @property
    def variables(self) -> list[keras.Variable]:
        """The watched variables, in the order of `paths`."""
        return list(self._variables)

    def _compute(self, rows: list[int] | None = None) -> np.ndarray:
        """The digests of the variables at `rows` (default: all), a row each."""
        chosen = range(len(self._variables)) if rows is None else rows
        values = [self._variables[i].value for i in chosen]
        if not values:
            return np.zeros((0, 2), np.int64)
        host = [_on_host(value) for value in values]
        out = np.zeros((len(values), 2), np.int64)
        if any(host):
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                rows = [i for i, h in enumerate(host) if h]
                for i, digest in zip(rows, pool.map(lambda i: _host_digest(values[i], self._key), rows)):
                    out[i] = digest
        if not all(host):
            digest, keys = _digest_function(), keras.ops.convert_to_tensor(self._keys)
            rows = [i for i, h in enumerate(host) if not h]
            stacked = keras.ops.convert_to_numpy(keras.ops.stack([digest(values[i], keys) for i in rows]))
            out[rows] = stacked
        return out

    def _reference(self, i: int, like: np.ndarray) -> np.ndarray | None:
        """The value kept for variable `i`, in `like`'s dtype and shape."""
        if self._memory is not None:
            raw = self._memory[i]
        elif self._directory is not None:
            raw = np.fromfile(os.path.join(self._directory, f"{i}.bin"), dtype=np.uint8)
        else:
            return None
        return raw.view(like.dtype).reshape(like.shape)

    def changes(self, among: list[keras.Variable] | None = None) -> dict[str, float]:
        """`{path: largest absolute change}` of every watched variable that changed.

        Args:
            among: Check only these of the watched variables. Defaults to None: all.
        """
        if among is None:
            rows = list(range(len(self._variables)))
        else:
            wanted = {id(v) for v in among}
            rows = [i for i, v in enumerate(self._variables) if id(v) in wanted]
        now = self._compute(rows)
        changed = [rows[k] for k in np.nonzero(np.any(now != self._checksums[rows], axis=1))[0]]
        out = {}
        for i in changed:
            after = np.ascontiguousarray(keras.ops.convert_to_numpy(self._variables[i].value))
            before = self._reference(int(i), after)
            if before is None:
                out[self.paths[i]] = math.nan
                continue
            diff = np.abs(after.astype(np.float64) - before.astype(np.float64))
            out[self.paths[i]] = float(np.nanmax(diff)) if diff.size else math.nan
        return out

    def verify(self, among: list[keras.Variable] | None = None) -> None:
        """Raises `FrozenWeightsChanged` if any watched variable changed.

        Args:
            among: Check only these of the watched variables. Defaults to None: all.
        """
        changes = self.changes(among)
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

    At the start of every epoch it looks again at what is frozen: where that changed (a
    new phase of `fl.FineTune` applied its plan, or code set `trainable` between two
    `fit` calls), the variables frozen before and still frozen are checked, and a new
    fingerprint is taken of what is frozen now. So the audit holds every phase to that
    phase's plan, passed to `FineTune.fit(callbacks=...)` for the whole run as well as
    to one `Phase(callbacks=...)`.

    Args:
        reference: As in `Fingerprint`. Defaults to `"disk"`.
    """

    def __init__(self, *, reference: Reference = "disk"):
        super().__init__()
        self.reference = reference
        self.fingerprint: Fingerprint | None = None

    def on_train_begin(self, logs=None):
        self._take(audited_variables(self.model))

    def on_epoch_begin(self, epoch, logs=None):
        watched = audited_variables(self.model)
        if self.fingerprint is None or [id(v) for _, v in watched] != [id(v) for v in self.fingerprint.variables]:
            self._take(watched)

    def _take(self, watched: list[tuple[str, keras.Variable]]) -> None:
        """Checks the variables still watched against the old fingerprint, then
        fingerprints `watched`."""
        old, self.fingerprint = self.fingerprint, None
        if old is not None:
            try:
                old.verify(among=[v for _, v in watched])
            finally:
                old.close()
        self.fingerprint = Fingerprint(watched, reference=self.reference)

    def on_epoch_end(self, epoch, logs=None):
        if self.fingerprint is not None:
            self.fingerprint.verify()

    def on_train_end(self, logs=None):
        if self.fingerprint is not None:
            try:
                self.fingerprint.verify()
            finally:
                self.fingerprint.close()
