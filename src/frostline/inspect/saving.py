"""What a `.keras` file stores about frostline: the applied plan, as `assets/frostline_plan.yaml`.

`fl.apply` gives the model a `save_assets` hook (see `frostline.apply.recording`), which
Keras calls while writing a `.keras` file; `write_plan_asset` is what it writes. Keras
itself ignores the asset when loading; `fl.load_plan` reads it back and `fl.load_model`
re-applies it (inference modes are not part of Keras's config, so a plain
`keras.saving.load_model` restores the frozen set but not them).
"""

from __future__ import annotations

import os
import zipfile

import keras

from frostline import _state
from frostline.errors import FrostlineValueError, MissingFileError, NoStoredPlan
from frostline.plan.plan import Plan

__all__ = ["PLAN_ASSET", "applied_plan", "load_plan", "write_plan_asset"]

PLAN_ASSET = "frostline_plan.yaml"


def applied_plan(model: keras.layers.Layer) -> Plan:
    """Every plan applied to `model` with `fl.apply`, in order, as one Plan.

    Returns an empty Plan for a model no plan was applied to.
    """
    record = _state.peek(model, _state.ModelState)
    return record.plan if record is not None and record.plan is not None else Plan()


def write_plan_asset(model: keras.layers.Layer, dir_path: str) -> None:
    """Writes the model's applied plan into a `.keras` file's asset folder (if it has one)."""
    record = _state.peek(model, _state.ModelState)
    if record is not None and record.plan is not None:
        with open(os.path.join(dir_path, PLAN_ASSET), "w") as f:
            f.write(record.plan.to_yaml())


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """The plan stored in a `.keras` file by `model.save` after `fl.apply`.

    Args:
        path: A `.keras` file.

    Returns:
        The applied plans, in order, as one Plan.

    Raises:
        MissingFileError: (a `FileNotFoundError`) if `path` does not exist.
        FrostlineValueError: if it is not a `.keras` archive.
        NoStoredPlan: (a `LookupError`) if it holds no frostline plan (no plan was
            applied before saving); `fl.Plan.from_model(model)` describes any model's
            current flags.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"No such file: {path!r}")
    if not zipfile.is_zipfile(path):
        raise FrostlineValueError(f"Expected a .keras file (a zip archive written by model.save()). Received: {path!r}")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == PLAN_ASSET]
        if not names:
            raise NoStoredPlan(
                f"{path!r} holds no frostline plan: it was saved without fl.apply. "
                "Load it and call fl.Plan.from_model(model) to describe its flags."
            )
        text = archive.read(min(names, key=len)).decode()
    return Plan.from_yaml(text)
