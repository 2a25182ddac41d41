"""Checkpoints of a FineTune run: written after every epoch in an order that keeps
`latest` naming a complete checkpoint, verified whole (SHA-256 digests of every file, no
NaN or inf) before anything is read into a model, and a lock that keeps a folder to one
run at a time. docs/checkpoints.md has the layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import keras
import ml_dtypes
import numpy as np

from frostline.errors import CheckpointError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["Checkpoint", "folder_lock", "read_latest", "verify_checkpoint", "write_checkpoint"]

LATEST = "latest"
LOCK = ".lock"
STATE = "state.json"
FILES = ("model.npz", "optimizer.npz")
_MAX_STATE_BYTES = 256 * 2**20
_MAX_POINTER_BYTES = 4096
_START_OVER = "Start a new run instead (without resume=True, or without --resume), or resume from a copy of the folder."


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(state: dict[str, Any]) -> bytes:
    """The bytes a state's digest covers: every field but the digest, keys sorted."""
    rest = {k: v for k, v in state.items() if k != "state_sha256"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()


def _save_npz(path: str, variables: list) -> list[str]:
    """Writes the variables' values; returns their dtypes' names (`.npz` keeps bfloat16
    and float8 as raw bytes)."""
    # The variable, not v.value: under a tf.distribute scope NumPy cannot read a mirrored
    # optimizer variable's raw value.
    arrays = {f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    return [a.dtype.name for a in arrays.values()]


def _write_directory(directory: str, name: str, model: keras.Model, optimizer, state: dict[str, Any]) -> str:
    """Writes the checkpoint's files, flushed, into a new temporary directory; returns it."""
    temporary = tempfile.mkdtemp(prefix=f".{name}.", dir=directory)
    try:
        files = {}
        for filename, variables in zip(FILES, (model.variables, optimizer.variables)):
            path = os.path.join(temporary, filename)
            dtypes = _save_npz(path, variables)
            files[filename] = {"sha256": _sha256(path), "bytes": os.path.getsize(path),
                               "variables": [v.path for v in variables], "dtypes": dtypes}
        # Through JSON once, so that the digest covers what a reader will parse.
        sealed = json.loads(json.dumps({**state, "files": files}))
        sealed["state_sha256"] = hashlib.sha256(_canonical(sealed)).hexdigest()
        with open(os.path.join(temporary, STATE), "w") as f:
            json.dump(sealed, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_directory(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return temporary


def _point_latest_at(directory: str, name: str) -> None:
    """Replaces the `latest` pointer atomically."""
    pointer = os.path.join(directory, f".{LATEST}.tmp")
    with open(pointer, "w") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, os.path.join(directory, LATEST))
    _fsync_directory(directory)


def _remove_all_but(directory: str, name: str) -> None:
    """Removes older checkpoints and what interrupted writes left."""
    for entry in os.listdir(directory):
        if (entry.startswith("epoch-") and entry != name) or entry.startswith(".epoch-"):  # older, interrupted
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def write_checkpoint(directory: str, name: str, model: keras.Model, optimizer, state: dict[str, Any]) -> str:
    """Writes one checkpoint and points `latest` at it; removes older ones.

    In this order, so that a process killed at any point leaves `latest` naming a
    complete checkpoint: the files are written and flushed in a temporary directory,
    which is renamed into place; `latest` is replaced, and only then are the other
    checkpoints removed. If a checkpoint of the same name exists (a run started afresh
    in a used folder), `latest` names the temporary directory while the old one is
    removed and its name filled with the new files.

    Args:
        directory: The run's checkpoint folder (made if missing).
        name: The checkpoint's name, e.g. "epoch-00003".
        model: Its variables go to `model.npz`.
        optimizer: Its variables go to `optimizer.npz`.
        state: Written as `state.json`, with the files' SHA-256 digests and its own.

    Returns:
        The checkpoint's path.
    """
    os.makedirs(directory, exist_ok=True)
    temporary = _write_directory(directory, name, model, optimizer, state)
    final = os.path.join(directory, name)
    named = False  # whether `latest` names the temporary directory
    try:
        if os.path.lexists(final):
            # `latest` may name the old one: it names the complete new copy while the old
            # goes and `final` is filled (hard links, no copying) until it is complete.
            named = True  # from here on, even if the replace below fails halfway
            _point_latest_at(directory, os.path.basename(temporary))
            shutil.rmtree(final)
            os.mkdir(final)
            for source, target in ((os.path.join(temporary, f), os.path.join(final, f)) for f in (*FILES, STATE)):
                try:
                    os.link(source, target)
                except OSError:  # a file system without hard links
                    shutil.copyfile(source, target)
            _fsync_directory(final)
        else:
            os.rename(temporary, final)
        _fsync_directory(directory)
    except BaseException:
        if not named:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    _point_latest_at(directory, name)
    _remove_all_but(directory, name)
    return final


# ---- the lock ------------------------------------------------------------------------------


@contextlib.contextmanager
def folder_lock(directory: str | None) -> Iterator[None]:
    """Holds an exclusive lock on a checkpoint folder for the length of the block (an
    `fcntl.flock` on `directory/.lock`, which holds the process id); the lock file is
    removed on exit. Does nothing for `directory=None`, or where `fcntl` is missing; warns
    and goes on unlocked on a file system that cannot lock.

    Args:
        directory: The checkpoint folder (made if missing), or None.

    Raises:
        CheckpointError: at once, when another process (or another run in this one)
            holds the lock.
    """
    if directory is None or fcntl is None:
        yield
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"The checkpoint folder {directory!r} is in use by another run (process id {holder}, "
                f"which holds {path!r}); two runs in one folder would overwrite each other's checkpoints. "
                "Wait for it to end, or give this run another checkpoint_dir."
            ) from None
        except OSError as e:  # a file system without flock
            os.close(fd)
            warnings.warn(f"The checkpoint folder {directory!r} cannot be locked ({e}); this run goes on "
                          "without the lock, so make sure no other run uses the folder.", stacklevel=3)
            yield
            return
        # The holder before us may have removed the file between our open and our lock.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


# ---- reading -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and verified: every file's digest and size as `state.json`
    says, `state.json`'s own digest, no non-finite value in any array.

    Attributes:
        path: Its directory.
        state: `state.json`, parsed (with `files` and `state_sha256`).
        arrays: `{"model.npz": [...], "optimizer.npz": [...]}`, the arrays in order.
        paths: The same, the paths of the variables they were saved from.
    """

    path: str
    state: dict[str, Any]
    arrays: dict[str, list[np.ndarray]]
    paths: dict[str, list[str]]


def _checkpoint_path(directory: str) -> str:
    """The directory `latest` names, which must be one entry of `directory`."""
    pointer = os.path.join(directory, LATEST)
    if not os.path.isfile(pointer):
        raise CheckpointError(f"No checkpoint to resume from in {directory!r} (no '{LATEST}' file). "
                              "Start a new run instead (without resume=True, or without --resume).")
    with open(pointer, "rb") as f:
        raw = f.read(_MAX_POINTER_BYTES + 1)
    name = raw.decode(errors="replace").strip()
    one_entry = "/" not in name.replace("\\", "/") and name not in ("", ".", "..") and not os.path.isabs(name)
    if not one_entry or "\0" in name or "\ufffd" in name or len(raw) > _MAX_POINTER_BYTES:
        raise CheckpointError(
            f"{pointer!r} should name a checkpoint directory inside {directory!r}, like 'epoch-00003'. "
            f"Received: {name[:200]!r}; a path elsewhere is not followed. {_START_OVER}"
        )
    path = os.path.join(directory, name)
    if os.path.islink(path) or not os.path.isdir(path):
        raise CheckpointError(f"{pointer!r} names {name!r}, which is not a checkpoint directory in {directory!r}. "
                              f"{_START_OVER}")
    return path


def _parse_state(path: str) -> dict[str, Any]:
    where = os.path.join(path, STATE)
    if not os.path.isfile(where) or os.path.getsize(where) > _MAX_STATE_BYTES:
        raise CheckpointError(f"The checkpoint {path!r} has no readable {STATE} (of at most {_MAX_STATE_BYTES} "
                              f"bytes). {_START_OVER}")

    def unique(pairs):
        if len(keys := [k for k, _ in pairs]) != len(set(keys)):
            raise ValueError(f"a key appears twice: {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
        return dict(pairs)

    try:
        with open(where, encoding="utf-8") as f:
            state = json.load(f, object_pairs_hook=unique)
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{where!r} cannot be read as JSON: {str(e)[:200]}. {_START_OVER}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{where!r} should hold a JSON object. Received: a {type(state).__name__}. "
                              f"{_START_OVER}")
    return state


def _check_digest(path: str, state: dict[str, Any]) -> None:
    where = os.path.join(path, STATE)
    digest = state.get("state_sha256")
    if not isinstance(digest, str):
        raise CheckpointError(f"{where!r}: expected a field 'state_sha256' (the digest of the state). "
                              f"Received: state_sha256={digest!r}. {_START_OVER}")
    if hashlib.sha256(_canonical(state)).hexdigest() != digest:
        raise CheckpointError(f"{where!r} was changed after it was written: its content does not match its "
                              f"state_sha256. {_START_OVER}")


def _file_entries(path: str, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    where = os.path.join(path, STATE)
    files = state.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(FILES):
        raise CheckpointError(f"{where!r}: expected a field 'files' with the digests of {', '.join(FILES)}. "
                              f"Received: files={str(files)[:200]}. {_START_OVER}")
    for filename, entry in files.items():
        lists = ("variables", "dtypes")
        valid = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and type(entry.get("bytes")) is int
                 and all(isinstance(entry.get(k), list) and all(isinstance(n, str) for n in entry[k]) for k in lists)
                 and len(entry["variables"]) == len(entry["dtypes"]))
        if not valid:
            raise CheckpointError(f"{where!r}: files.{filename} should be {{'sha256': str, 'bytes': int, "
                                  f"'variables': [str, ...], 'dtypes': [str, ...]}} (as many dtypes as variables). "
                                  f"Received: {str(entry)[:200]}. {_START_OVER}")
    return files


def _read_arrays(path: str, filename: str, entry: dict[str, Any]) -> list[np.ndarray]:
    where = os.path.join(path, filename)
    try:
        info = os.lstat(where)
    except OSError:
        raise CheckpointError(f"The checkpoint file {where!r} is missing. {_START_OVER}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"The checkpoint file {where!r} is not a regular file. {_START_OVER}")
    if info.st_size != entry["bytes"] or _sha256(where) != entry["sha256"]:
        what = (f"it has {info.st_size} bytes, {STATE} says {entry['bytes']}" if info.st_size != entry["bytes"]
                else f"its SHA-256 is not the one in {STATE}")
        raise CheckpointError(f"The checkpoint file {where!r} is damaged: {what}. It was truncated or altered "
                              f"after it was written. {_START_OVER}")
    count = len(entry["variables"])
    try:
        with np.load(where, allow_pickle=False) as data:
            if sorted(data.files) != sorted(f"v{i}" for i in range(count)):
                raise CheckpointError(f"{where!r} should hold the arrays v0 to v{count - 1}. "
                                      f"Received: {len(data.files)} arrays. {_START_OVER}")
            arrays = [data[f"v{i}"] for i in range(count)]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{where!r} cannot be read as NumPy arrays: {str(e)[:200]}. {_START_OVER}") from None
    for i, (variable, dtype) in enumerate(zip(entry["variables"], entry["dtypes"])):
        array = arrays[i] = _as_dtype(arrays[i], dtype, f"{where!r}, variable {variable!r} (v{i})")
        if dtype.startswith(("float", "bfloat", "complex")) and not np.isfinite(array).all():
            nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            raise CheckpointError(
                f"The checkpoint file {where!r} holds non-finite values in variable {variable!r} (v{i}): "
                f"{nan} NaN, {inf} inf. The run had diverged when it was written, or the file was altered; "
                f"resuming would train from them. {_START_OVER}"
            )
    return arrays


def _as_dtype(array: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """The array as the dtype it was saved with: bfloat16 and float8 come back as bytes."""
    if array.dtype.kind == "V" and isinstance(getattr(ml_dtypes, dtype, None), type):
        wanted = np.dtype(getattr(ml_dtypes, dtype))
        if wanted.itemsize == array.dtype.itemsize:
            array = array.view(wanted)
    if array.dtype.name != dtype:
        raise CheckpointError(f"{where}: expected dtype {dtype}, as {STATE} says. Received: {array.dtype.name}. "
                              f"{_START_OVER}")
    return array


def read_latest(directory: str) -> tuple[str, dict[str, Any]]:
    """The checkpoint `latest` names in `directory` and its `state.json`, parsed but
    not yet verified (see `verify_checkpoint`).

    Raises:
        CheckpointError: when there is none; when `latest` names anything but a
            directory in `directory` (an absolute path, `..`, a link); when
            `state.json` is not a JSON object (or has a key twice).
    """
    path = _checkpoint_path(directory)
    return path, _parse_state(path)


def verify_checkpoint(path: str, state: dict[str, Any]) -> Checkpoint:
    """Reads a checkpoint's arrays after verifying all of it; nothing is loaded anywhere.

    Args:
        path: The checkpoint's directory.
        state: Its `state.json`, as `read_latest` returns it.

    Raises:
        CheckpointError: when `state.json` was changed after it was written (its
            `state_sha256`), a file is missing, its size or SHA-256 is not the one in
            `state.json`, it cannot be read as arrays, or an array holds NaN or inf.
            The message names the file (and the variable).
    """
    files = _file_entries(path, state)
    _check_digest(path, state)
    arrays = {filename: _read_arrays(path, filename, files[filename]) for filename in FILES}
    return Checkpoint(path, state, arrays, {filename: list(files[filename]["variables"]) for filename in FILES})
