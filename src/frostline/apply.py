"""apply: the only code that changes a model's `trainable` flags."""

from __future__ import annotations

import keras

from frostline.plan import Plan, Resolution, resolve
from frostline.report import Report
from frostline.tree import LayerTree

__all__ = ["FlagSnapshot", "apply"]


class FlagSnapshot:
    """Every `trainable` flag of a model, layers and variables, to put back later.

    Args:
        tree: `LayerTree(model)`.
    """

    def __init__(self, tree: LayerTree):
        self._layers = [(node.layer, node.layer.trainable) for node in tree]
        self._variables = [(v, v.trainable) for node in tree for v in node.weights]

    def restore(self) -> None:
        """Puts every flag back as it was when the snapshot was taken."""
        for variable, flag in self._variables:
            variable.trainable = flag
        for layer, flag in self._layers:
            # Not the public setter: it recurses into sublayers and would overwrite them.
            layer._trainable = flag

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlagSnapshot):
            return NotImplemented
        flags = lambda s: ([(id(l), f) for l, f in s._layers], [(id(v), f) for v, f in s._variables])
        return flags(self) == flags(other)


def write_flags(resolution: Resolution) -> None:
    """Sets layer and variable flags so that Keras trains exactly the resolved set.

    Each flag is written directly: Keras's `layer.trainable` setter recurses into
    sublayers, so setting containers and then their layers would depend on order, and a
    shared layer would take whatever the last container visited said.
    """
    for decision in resolution.variables:
        if not decision.is_state:
            decision.variable.trainable = decision.trainable
    for node in resolution.tree:
        node.layer._trainable = resolution.container_trainable(node)


def apply(model: keras.layers.Layer, plan: Plan, *, strict: bool = True) -> Report:
    """Resolves `plan` against `model` and sets its `trainable` flags accordingly.

    The whole plan is validated before any flag changes; after any error every flag is
    exactly as it was. Afterwards `model.trainable_weights` is exactly the resolved set.

    Args:
        model: A Keras model (Sequential, Functional or subclassed) or layer.
        plan: The `Plan` to apply.
        strict: If True (default), a selector that matches nothing raises `PlanError`;
            if False it is a warning and the rule applies to what the others match.

    Returns:
        The `Report` of the model after the change, with the per-rule matches.

    Raises:
        PlanError: if the plan cannot be resolved against this model.

    Example:

    >>> import keras, frostline as fl
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="base")
    >>> model = keras.Sequential([base, keras.layers.Dense(1, name="head")])
    >>> report = fl.apply(model, fl.Plan().freeze("base"))
    >>> [layer.trainable for layer in model.layers]
    [False, True]
    >>> print(report.totals_line)
    trainable 4 (21.1%) · frozen 15 · total 19
    """
    if not isinstance(plan, Plan):
        raise TypeError(
            f"Expected a frostline Plan, e.g. fl.Plan().freeze('base'). "
            f"Received: plan={plan!r} (of type {type(plan).__name__})"
        )
    tree = LayerTree(model)
    resolution = resolve(plan, tree, strict=strict)
    snapshot = FlagSnapshot(tree)
    try:
        write_flags(resolution)
        _check_trainable_set(model, resolution)
    except BaseException:
        snapshot.restore()
        raise
    return Report(LayerTree(model), resolution)


def _check_trainable_set(model: keras.layers.Layer, resolution: Resolution) -> None:
    wanted = {id(v) for v in resolution.trainable_variables}
    actual = {id(v) for v in model.trainable_weights}
    if wanted != actual:
        missing = [v.path for v in resolution.trainable_variables if id(v) not in actual]
        extra = [v.path for v in model.trainable_weights if id(v) not in wanted]
        raise RuntimeError(
            "frostline could not make Keras train exactly the resolved variables; the "
            f"model's flags were restored. Not trainable but should be: {missing[:5]}; "
            f"trainable but should not be: {extra[:5]}."
        )
