"""What a `.keras` file stores about frostline: the state at save time, and the applied plan.

`fl.apply` gives the model a `save_assets` hook (see `frostline.apply.recording`), which
Keras calls while writing a `.keras` file; `write_assets` is what it writes:

- `assets/frostline_state.json`: the frozen set as it was at save time (every variable's
  `trainable` flag, by variable path), each layer's flag and inference mode, the
  learning-rate multipliers and the LoRA adapters (rank, alpha). Not only the plans that
  led there: flags set outside a plan (a keras-hub backbone's `enable_lora`, a hand-set
  `trainable`) are in it too;
- `assets/frostline_plan.yaml`: the plans applied, in order (`fl.load_plan`).

Keras itself ignores both when loading (and keras-hub backbones rebuild their layers
trainable); `fl.load_model` restores the stored state.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from typing import Any

import keras

from frostline import _state
from frostline.errors import FrostlineError, FrostlineValueError, MissingFileError, NoStoredPlan, PlanError, shorten
from frostline.model.adapters import lora_rank
from frostline.model.modes import is_forced_inference
from frostline.model.tree import LayerTree
from frostline.plan.plan import Plan

__all__ = ["MAX_ASSET_BYTES", "PLAN_ASSET", "STATE_ASSET", "applied_plan", "load_plan", "read_stored_state", "stored_state", "write_assets"]

PLAN_ASSET = "frostline_plan.yaml"
STATE_ASSET = "frostline_state.json"
MAX_ASSET_BYTES = 64 * 2**20
"""The largest frostline asset read from a `.keras` file (64 MiB); a larger one is not a
file frostline wrote and is refused unread."""
STATE_VERSION = 1


def applied_plan(model: keras.layers.Layer) -> Plan:
    """Every plan applied to `model` with `fl.apply`, in order, as one Plan.

    Returns an empty Plan for a model no plan was applied to.
    """
    record = _state.peek(model, _state.ModelState)
    return record.plan if record is not None and record.plan is not None else Plan()


def stored_state(model: keras.layers.Layer) -> dict[str, Any]:
    """What the model's `.keras` file stores about it now: the frozen set, modes,
    multipliers and adapters, as plain data keyed by variable and layer path."""
    tree = LayerTree(model)
    trainable = tree.effective_trainable_ids()
    return {
        "version": STATE_VERSION,
        "variables": {n.variable_path(v): id(v) in trainable for n in tree for v in n.weights},
        "layers": {
            n.path: {"trainable": bool(n.layer.trainable), "inference": is_forced_inference(n.layer)}
            for n in tree.layers
        },
        "lr": {n.variable_path(v): tree.lr_multiplier(v) for n in tree for v in n.weights if tree.lr_multiplier(v) != 1.0},
        "adapters": {
            n.path: {"rank": lora_rank(n.layer), "alpha": float(n.layer.lora_alpha)}
            for n in tree.layers if lora_rank(n.layer)
        },
    }


def write_assets(model: keras.layers.Layer, dir_path: str) -> None:
    """Writes the model's stored state and applied plan into a `.keras` file's asset folder."""
    with open(os.path.join(dir_path, STATE_ASSET), "w") as f:
        json.dump(stored_state(model), f, indent=1, sort_keys=True)
    record = _state.peek(model, _state.ModelState)
    if record is not None and record.plan is not None:
        with open(os.path.join(dir_path, PLAN_ASSET), "w") as f:
            f.write(record.plan.to_yaml())


def _read_asset(path: str, name: str) -> str | None:
    """The text of an asset in a `.keras` archive, or None. Its size is checked before it
    is read and the read is bounded, so an asset that inflates past MAX_ASSET_BYTES (even
    one whose header claims less) is refused without being unpacked."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"No such file: {path!r}")
    if not zipfile.is_zipfile(path):
        raise FrostlineValueError(f"Expected a .keras file (a zip archive written by model.save()). Received: {path!r}")
    def too_big(size: str) -> FrostlineValueError:
        return FrostlineValueError(f"{path!r}: its {name} would unpack to {size} bytes, more than the "
                                   f"{MAX_ASSET_BYTES:,} frostline ever writes; refused unread. Expected a "
                                   ".keras file written by model.save().")

    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == name]
            if not infos:
                return None
            info = min(infos, key=lambda i: len(i.filename))
            if info.file_size > MAX_ASSET_BYTES:
                raise too_big(f"{info.file_size:,}")
            with archive.open(info) as f:
                data = _read_bounded(f, too_big)
    except FrostlineError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError, ValueError,
            struct.error) as e:  # what a damaged archive makes zipfile raise
        raise FrostlineValueError(f"{path!r}: its {name} cannot be read ({shorten(str(e), quote=False)}). "
                                  "Expected a .keras file written by model.save().") from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise FrostlineValueError(f"{path!r}: its {name} is not UTF-8 text.") from None


def _read_bounded(f, too_big) -> bytes:
    # In pieces: zipfile inflates as much as one read asks for, even past the stored size.
    chunks, total = [], 0
    while chunk := f.read(2**20):
        total += len(chunk)
        if total > MAX_ASSET_BYTES:  # a size in the archive that understates the data
            raise too_big(f"more than {MAX_ASSET_BYTES:,}")
        chunks.append(chunk)
    return b"".join(chunks)


def read_stored_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state stored in a `.keras` file by `model.save` (see `stored_state`), or None
    for a file saved without frostline.

    Raises:
        MissingFileError: if `path` does not exist.
        FrostlineValueError: for a file that is not a `.keras` archive, or a stored state
            that is not one frostline wrote.
    """
    text = _read_asset(os.fspath(path), STATE_ASSET)
    if text is None:
        return None
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise FrostlineValueError(f"{os.fspath(path)!r}: its {STATE_ASSET} is not valid JSON "
                                  f"({shorten(str(e), quote=False)}).") from None
    expected = {"version", "variables", "layers", "lr", "adapters"}
    if not isinstance(state, dict) or set(state) != expected or state.get("version") != STATE_VERSION:
        got = shorten(sorted(state, key=str)) if isinstance(state, dict) else type(state).__name__
        raise FrostlineValueError(
            f"{os.fspath(path)!r}: its {STATE_ASSET} is not one this frostline writes (version "
            f"{STATE_VERSION} with keys {sorted(expected)}). Received: {got}."
        )
    problem = _state_problem(state)
    if problem:
        raise FrostlineValueError(f"{os.fspath(path)!r}: its {STATE_ASSET} is not one this frostline writes: {problem}.")
    return state


def _state_problem(state: dict[str, Any]) -> str | None:
    """What in a stored state's values has the wrong type, or None."""
    number = (int, float)
    expected = {
        "variables": ("true or false", lambda v: isinstance(v, bool)),
        "layers": ("{trainable: bool, inference: bool}", lambda v: isinstance(v, dict) and set(v) == {"trainable", "inference"}
                   and all(isinstance(x, bool) for x in v.values())),
        "lr": ("a number of 0 or more", lambda v: isinstance(v, number) and not isinstance(v, bool) and 0 <= v < float("inf")),
        "adapters": ("{rank: positive int, alpha: number}", lambda v: isinstance(v, dict) and set(v) == {"rank", "alpha"}
                     and isinstance(v["rank"], int) and not isinstance(v["rank"], bool) and 0 < v["rank"] < 2**31
                     and isinstance(v["alpha"], number) and not isinstance(v["alpha"], bool)),
    }
    for key, (what, valid) in expected.items():
        entries = state[key]
        if not isinstance(entries, dict):
            return f"{key!r} expects a mapping of paths. Received: {shorten(entries)}"
        for path, value in entries.items():
            if not valid(value):
                return f"{key}[{shorten(path)}] expects {what}. Received: {shorten(value)}"
    return None


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """The plan stored in a `.keras` file by `model.save` after `fl.apply`.

    Args:
        path: A `.keras` file.

    Returns:
        The applied plans, in order, as one Plan.

    Raises:
        MissingFileError: (a `FileNotFoundError`) if `path` does not exist.
        FrostlineValueError: if it is not a `.keras` archive, or its stored plan would
            unpack to more than MAX_ASSET_BYTES (64 MiB) or cannot be read.
        PlanError: if the stored plan is not a plan (see `Plan.from_yaml`).
        NoStoredPlan: (a `LookupError`) if it holds no frostline plan (no plan was
            applied before saving); `fl.Plan.from_model(model)` describes any model's
            current flags.
    """
    text = _read_asset(os.fspath(path), PLAN_ASSET)
    if text is None:
        raise NoStoredPlan(
            f"{os.fspath(path)!r} holds no frostline plan: it was saved without fl.apply. "
            "Load it and call fl.Plan.from_model(model) to describe its flags."
        )
    try:
        return Plan.from_yaml(text)
    except PlanError as e:
        raise PlanError(f"{os.fspath(path)!r}: its stored plan ({PLAN_ASSET}): {e}") from None
