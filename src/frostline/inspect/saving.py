"""The applied plan travels inside the `.keras` file written by `model.save`.

`fl.apply` remembers the plans applied to a model and gives the model a `save_assets`
hook, which Keras calls while writing a `.keras` file: the plan lands in the archive as
`assets/frostline_plan.yaml`. Keras itself ignores it when loading; `fl.load_plan` reads
it back and `fl.load_model` re-applies it (inference modes are not part of Keras's
config, so a plain `keras.saving.load_model` restores the frozen set but not them).
"""

from __future__ import annotations

import os
import warnings
import weakref
import zipfile

import keras

from frostline.plan.plan import Plan

__all__ = ["applied_plan", "load_model", "load_plan", "record_plan"]

PLAN_ASSET = "frostline_plan.yaml"
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def record_plan(model: keras.layers.Layer, plan: Plan) -> None:
    """Remembers `plan` as applied to `model`, so that `model.save` stores it."""
    _PLANS[model] = _PLANS.get(model, Plan()).then(plan)
    if "save_assets" in model.__dict__:
        return
    inherited = getattr(model, "save_assets", None)
    model_ref = weakref.ref(model)

    def save_assets(dir_path: str) -> None:
        if inherited is not None:
            inherited(dir_path)
        target = model_ref()
        plan = _PLANS.get(target) if target is not None else None
        if plan is not None:
            with open(os.path.join(dir_path, PLAN_ASSET), "w") as f:
                f.write(plan.to_yaml())

    # The instance dict, not setattr: Keras and torch must not track the hook.
    model.__dict__["save_assets"] = save_assets


def applied_plan(model: keras.layers.Layer) -> Plan:
    """Every plan applied to `model` with `fl.apply`, in order, as one Plan.

    Returns an empty Plan for a model no plan was applied to.
    """
    return _PLANS.get(model, Plan())


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """The plan stored in a `.keras` file by `model.save` after `fl.apply`.

    Args:
        path: A `.keras` file.

    Returns:
        The applied plans, in order, as one Plan.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if it is not a `.keras` archive.
        LookupError: if it holds no frostline plan (no plan was applied before
            saving); `fl.Plan.from_model(model)` describes any model's current flags.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: {path!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"Expected a .keras file (a zip archive written by model.save()). Received: {path!r}")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == PLAN_ASSET]
        if not names:
            raise LookupError(
                f"{path!r} holds no frostline plan: it was saved without fl.apply. "
                "Load it and call fl.Plan.from_model(model) to describe its flags."
            )
        text = archive.read(min(names, key=len)).decode()
    return Plan.from_yaml(text)


def load_model(path: str | os.PathLike[str], **kwargs) -> keras.Model:
    """`keras.saving.load_model`, then the stored plan re-applied (inference modes too).

    Args:
        path: A `.keras` file.
        **kwargs: Passed to `keras.saving.load_model`.

    Returns:
        The model, with the frozen set and modes it was saved with.
    """
    from frostline.apply.apply import apply  # apply records plans through this module

    model = keras.saving.load_model(path, **kwargs)
    try:
        plan = load_plan(path)
    except LookupError:
        return model
    with warnings.catch_warnings():
        # Selectors that matched nothing when the plan was applied match nothing now.
        warnings.simplefilter("ignore", UserWarning)
        apply(model, plan, strict=False)
    return model
