"""load_model: a `.keras` file loaded with the frozen set and modes it was saved with."""

from __future__ import annotations

import os
import warnings
from typing import Any

import keras

from frostline import _state
from frostline.apply.apply import apply
from frostline.errors import NoStoredPlan
from frostline.inspect.saving import load_plan, read_stored_state
from frostline.model.adapters import lora_rank
from frostline.model.tree import LayerTree
from frostline.plan.plan import Plan
from frostline.plan.selectors import exact_layer_selector, exact_variable_selector

__all__ = ["load_model", "plan_from_state", "restore_state"]


def load_model(path: str | os.PathLike[str], **kwargs) -> keras.Model:
    """`keras.saving.load_model`, then the frostline state stored in the file restored.

    The file stores the frozen set, inference modes, learning-rate multipliers and LoRA
    adapters as they were at save time (see [saving](saving.md)); they are restored
    exactly, also on models (keras-hub backbones) that rebuild their layers trainable
    when loaded. Where the stored state and the loaded model disagree (a stored variable
    the model does not have, adapters of another rank), a `UserWarning` says what. A file
    from an earlier frostline that stores only plans gets them applied again.

    Args:
        path: A `.keras` file.
        **kwargs: Passed to `keras.saving.load_model`.

    Returns:
        The model, with the frozen set and modes it was saved with.

    Raises:
        MissingFileError: if `path` does not exist.
        FrostlineValueError: for a file that is not a `.keras` archive, or whose frostline
            assets are over `MAX_ASSET_BYTES` (64 MiB) or unreadable; checked before Keras
            reads the file.
        PlanError: for a stored plan that is not a plan.
    """
    # frostline's assets first: size-checked and parsed before Keras unpacks anything.
    state = read_stored_state(path)
    try:
        plan = load_plan(path)
    except NoStoredPlan:
        plan = None
    model = keras.saving.load_model(path, **kwargs)
    if state is not None:
        restore_state(model, state, source=os.fspath(path))
    elif plan is not None:
        with warnings.catch_warnings():
            # Selectors that matched nothing when the plan was applied match nothing now.
            warnings.simplefilter("ignore", UserWarning)
            apply(model, plan, strict=False)
    if plan is not None:
        _state.model_state(model).plan = plan  # what it was saved with, saved again with it
    return model


def plan_from_state(model: keras.layers.Layer, state: dict[str, Any]) -> tuple[Plan, list[str]]:
    """The plan that gives `model` the stored state, and what in the state and the model
    disagrees (one line each)."""
    tree = LayerTree(model)
    aliases = {id(v): [f"{p}/{v.name}" if p else v.name for p in n.paths] for n in tree for v in n.weights}
    by_path = {alias: v for n in tree for v in n.weights for alias in aliases[id(v)]}
    stored = state["variables"]
    missing = sorted(p for p in stored if p not in by_path)
    unstored = [n.variable_path(v) for n in tree for v in n.weights if not any(a in stored for a in aliases[id(v)])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} stored variable(s) are not in the model: {missing[:3]}")
    if unstored:
        problems.append(f"{len(unstored)} variable(s) of the model are not in the stored state (they keep what Keras loaded): {unstored[:3]}")
    problems += _adapter_differences(tree, state["adapters"])
    names = [n.name for n in tree.layers]
    layers = {p: n for n in tree.layers for p in n.paths}
    trained = [exact_variable_selector(p) for p, t in stored.items() if t and p in by_path]
    frozen = [exact_variable_selector(p) for p, t in stored.items() if not t and p in by_path]
    inference = [exact_layer_selector(layers[p], names) for p, s in state["layers"].items() if s["inference"] and p in layers]
    plan = Plan()
    for rule, selectors in ((Plan.unfreeze, trained), (Plan.freeze, frozen), (Plan.inference, inference)):
        if selectors:
            plan = rule(plan, selectors)
    by_multiplier: dict[float, list[str]] = {}
    for p, m in state["lr"].items():
        if p in by_path:
            by_multiplier.setdefault(float(m), []).append(exact_variable_selector(p))
    for m, selectors in sorted(by_multiplier.items()):
        plan = plan.lr(selectors, m)
    return plan, problems


def _adapter_differences(tree: LayerTree, adapters: dict[str, Any]) -> list[str]:
    layers = {p: n for n in tree.layers for p in n.paths}
    out = []
    for path, stored in sorted(adapters.items()):
        node = layers.get(path)
        rank = lora_rank(node.layer) if node is not None else None
        if rank != stored["rank"]:
            out.append(f"{path!r} was saved with LoRA adapters of rank {stored['rank']}; loaded, it has "
                       + (f"rank {rank}" if rank else "none"))
    return out


def _readapt(model: keras.layers.Layer, adapters: dict[str, Any]) -> None:
    """Gives back LoRA adapters that the loaded model lost (keras-hub backbones rebuild
    their layers without them). Keras saved the kernels with the adapters merged in, so
    fresh adapters (the second matrix zero) keep every output as it was."""
    tree = LayerTree(model)
    layers = {p: n for n in tree.layers for p in n.paths}
    names = [n.name for n in tree.layers]
    plan = Plan()
    for path, stored in sorted(adapters.items()):
        node = layers.get(path)
        if node is not None and lora_rank(node.layer) is None:
            plan = plan.lora(exact_layer_selector(node, names), int(stored["rank"]), alpha=float(stored["alpha"]))
    if plan.rules:
        apply(model, plan)


def restore_state(model: keras.layers.Layer, state: dict[str, Any], *, source: str = "the stored state") -> None:
    """Gives `model` a stored state (see `frostline.inspect.saving.stored_state`), warning
    where state and model disagree."""
    _readapt(model, state["adapters"])
    plan, problems = plan_from_state(model, state)
    if problems:
        warnings.warn(f"{source}: the stored frostline state and the loaded model disagree: " + "; ".join(problems)
                      + ". The rest of the stored state was restored.", UserWarning, stacklevel=3)
    apply(model, plan)
