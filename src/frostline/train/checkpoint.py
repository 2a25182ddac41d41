"""Checkpoints of a FineTune run: written atomically after every epoch, read to resume.

Layout of a checkpoint directory:

    runs/exp1/
      latest                  name of the newest complete checkpoint ("epoch-00012")
      epoch-00012/
        model.npz             every model variable (weights, statistics, seed states)
        optimizer.npz         every optimizer variable
        state.json            the run's position, history, plans, RNG and config

A checkpoint is written to a temporary directory and renamed into place, then `latest`
is replaced; a process killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import keras
import numpy as np

from frostline.errors import CheckpointError

__all__ = ["config_differences", "load_into", "read_latest", "write_checkpoint"]

LATEST = "latest"


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_npz(path: str, variables: list) -> None:
    # The variable, not v.value: under a tf.distribute scope NumPy cannot read a mirrored
    # optimizer variable's raw value.
    arrays = {f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def _load_npz(path: str, variables: list, what: str) -> None:
    with np.load(path) as data:
        if len(data.files) != len(variables):
            raise CheckpointError(
                f"The checkpoint's {what} has {len(data.files)} variables; the model now has "
                f"{len(variables)}. Was it written for another model?"
            )
        for i, v in enumerate(variables):
            value = data[f"v{i}"]
            if tuple(value.shape) != tuple(v.shape):
                raise CheckpointError(
                    f"The checkpoint's {what} variable {i} has shape {value.shape}; "
                    f"{v.path} has {tuple(v.shape)}."
                )
            v.assign(value)


def _write_directory(directory: str, name: str, model: keras.Model, optimizer, state: dict[str, Any]) -> str:
    """Writes the checkpoint's files into a temporary directory, then renames it into
    place: a reader never sees a half-written checkpoint."""
    temporary = tempfile.mkdtemp(prefix=f".{name}.", dir=directory)
    try:
        _save_npz(os.path.join(temporary, "model.npz"), model.variables)
        _save_npz(os.path.join(temporary, "optimizer.npz"), optimizer.variables)
        with open(os.path.join(temporary, "state.json"), "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_directory(temporary)
        final = os.path.join(directory, name)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


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
        stale = entry.startswith("epoch-") and entry != name
        interrupted = entry.startswith(".epoch-")
        if stale or interrupted:
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def write_checkpoint(directory: str, name: str, model: keras.Model, optimizer, state: dict[str, Any]) -> str:
    """Writes one checkpoint atomically and points `latest` at it; removes older ones.

    Args:
        directory: The run's checkpoint folder (made if missing).
        name: The checkpoint's name, e.g. "epoch-00003".
        model: Its variables go to `model.npz`.
        optimizer: Its variables go to `optimizer.npz`.
        state: Written as `state.json`.

    Returns:
        The checkpoint's path.
    """
    os.makedirs(directory, exist_ok=True)
    final = _write_directory(directory, name, model, optimizer, state)
    _point_latest_at(directory, name)
    _remove_all_but(directory, name)
    return final


def read_latest(directory: str) -> tuple[str, dict[str, Any]]:
    """The newest complete checkpoint in `directory` and its state.

    Raises:
        CheckpointError: if there is none.
    """
    pointer = os.path.join(directory, LATEST)
    if not os.path.isfile(pointer):
        raise CheckpointError(
            f"No checkpoint to resume from in {directory!r} (no '{LATEST}' file). "
            "Start a new run instead (without resume=True, or without --resume)."
        )
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(directory, name)
    try:
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"The checkpoint {path!r} cannot be read: {e}") from None
    return path, state


def load_into(path: str, model: keras.Model, optimizer) -> None:
    """Loads a checkpoint's variables into a model and its (built) optimizer."""
    _load_npz(os.path.join(path, "model.npz"), model.variables, "model")
    _load_npz(os.path.join(path, "optimizer.npz"), optimizer.variables, "optimizer")


def config_differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """The fields where two configurations differ, as `path: stored -> current` lines."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append(f"{where}: (absent) -> {current[key]!r}")
            elif key not in current:
                out.append(f"{where}: {stored[key]!r} -> (absent)")
            else:
                out.extend(config_differences(stored[key], current[key], where))
        return out
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        out = []
        for i, (a, b) in enumerate(zip(stored, current)):
            out.extend(config_differences(a, b, f"{prefix}[{i}]"))
        return out
    return [] if stored == current else [f"{prefix}: {stored!r} -> {current!r}"]
