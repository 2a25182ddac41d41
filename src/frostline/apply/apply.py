"""apply and scoped: the only code that writes a model's `trainable` flags and modes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from frostline import _keras
from frostline.apply.adapters import add_adapters, remove_adapters
from frostline.apply.multipliers import model_lr_multipliers, set_model_lr_multipliers
from frostline.apply.recording import record_plan
from frostline.apply.sync import CompiledState, sync, sync_with_sharing, untangle_optimizer_buffers
from frostline.errors import FrostlineTypeError, TrainableSetMismatch
from frostline.inspect.report import Report
from frostline.model.adapters import lora_rank
from frostline.model.modes import is_forced_inference, set_inference
from frostline.model.tree import LayerTree
from frostline.plan.plan import Plan
from frostline.plan.resolve import Resolution, resolve

__all__ = ["FlagSnapshot", "apply", "scoped"]


class FlagSnapshot:
    """Every `trainable` flag of a model, layers and variables, every inference-mode
    override and the learning-rate multipliers, to put back later.

    Args:
        tree: `LayerTree(model)`.
    """

    def __init__(self, tree: LayerTree):
        self._model = tree.model
        # Each layer with its own flag, its mode and its own variables' flags.
        self._layers = [
            (node.layer, node.layer.trainable, is_forced_inference(node.layer), [(v, v.trainable) for v in node.weights])
            for node in tree
        ]
        self._lr = model_lr_multipliers(tree.model)

    def restore(self) -> None:
        """Puts every flag back as it was when the snapshot was taken."""
        for _, _, _, variables in self._layers:
            for variable, flag in variables:
                variable.trainable = flag
        for layer, flag, inference, _ in self._layers:
            # Not the public setter: it recurses into sublayers and would overwrite them.
            _keras.set_own_trainable(layer, flag)
            set_inference(layer, inference)
        set_model_lr_multipliers(self._model, self._lr)

    def changed_layers(self, before: FlagSnapshot) -> list[keras.layers.Layer]:
        """The layers whose own flag, mode or own variables' flags differ from `before`,
        or that it did not have: what other models sharing them must be synced for."""
        earlier = {id(layer): key for layer, key in before._layer_keys()}
        return [layer for layer, key in self._layer_keys() if earlier.get(id(layer)) != key]

    def _layer_keys(self) -> list[tuple[keras.layers.Layer, tuple]]:
        return [(l, (f, i, tuple((id(v), t) for v, t in vs))) for l, f, i, vs in self._layers]

    def _key(self) -> tuple:
        return (
            [(id(layer), key) for layer, key in self._layer_keys()],
            sorted((k, m) for k, (_, m) in self._lr.items()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlagSnapshot):
            return NotImplemented
        return self._key() == other._key()


def _write(resolution: Resolution) -> None:
    """Sets layer and variable flags and inference modes as resolved.

    Each flag is written directly: Keras's `layer.trainable` setter recurses into
    sublayers, so setting containers and then their layers would depend on order, and a
    shared layer would take whatever the last container visited said.
    """
    for decision in resolution.variables:
        if not decision.is_state:
            decision.variable.trainable = decision.trainable
    for node in resolution.tree:
        _keras.set_own_trainable(node.layer, resolution.container_trainable(node))
        set_inference(node.layer, resolution.decision(node).inference)
    set_model_lr_multipliers(
        resolution.tree.model,
        {id(d.variable): (d.variable, d.lr) for d in resolution.variables if not d.is_state},
    )


def apply(model: keras.layers.Layer, plan: Plan, *, strict: bool = True) -> Report:
    """Resolves `plan` against `model`, sets its flags, and makes them take effect.

    The whole plan is validated before anything changes. Afterwards
    `model.trainable_weights` is exactly the resolved set, the selected layers run in the
    resolved mode, and on a compiled model the next `fit` trains exactly that set with
    the optimizer state kept (see `sync`): no recompiling, also from a callback between
    epochs. Other compiled models that share a changed layer are synced too. After any
    error the flags, modes and optimizers are exactly as they were.

    Args:
        model: A Keras model (Sequential, Functional or subclassed) or layer.
        plan: The `Plan` to apply.
        strict: If True (default), a selector that matches nothing raises `PlanError`;
            if False it is a warning and the rule applies to what the others match.

    Returns:
        The `Report` of the model after the change, with the per-rule matches.

    Raises:
        PlanError: if the plan cannot be resolved against this model.
        FrostlineTypeError: if `plan` is not a `Plan`.
        SharedLayerError: if another compiled model shares a changed layer and its
            optimizer cannot be rebuilt (the message names it).

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
        raise FrostlineTypeError(
            f"Expected a frostline Plan, e.g. fl.Plan().freeze('base'). "
            f"Received: plan={plan!r} (of type {type(plan).__name__})"
        )
    return _apply(model, plan, strict=strict, stash=None, record=True)


def _apply(model, plan: Plan, *, strict: bool, stash: dict | None, record: bool) -> Report:
    tree = LayerTree(model)
    resolution = resolve(plan, tree, strict=strict)
    flags = FlagSnapshot(tree)
    compiled = CompiledState(model)
    adapted: list = []
    others: list = []  # the CompiledState of other compiled models synced too
    try:
        if resolution.adapters:
            # New adapter variables: resolve again so that the rules decide them too.
            adapted = add_adapters(resolution)
            tree = LayerTree(model)
            resolution = resolve(plan, tree, strict=strict)
        _write(resolution)
        _check_trainable_set(model, resolution)
        written = FlagSnapshot(tree)
        if adapted or written != flags:
            sync_with_sharing(model, written.changed_layers(flags), stash=stash, undo=others)
        else:  # nothing changed, nothing to retrace
            untangle_optimizer_buffers(model)
        if record:
            record_plan(model, plan)
    except BaseException:
        remove_adapters(adapted)
        flags.restore()
        compiled.restore()
        for state in others:
            state.restore()
        raise
    return Report(LayerTree(model), resolution)


@contextlib.contextmanager
def scoped(model: keras.layers.Layer, plan: Plan, *, strict: bool = True) -> Iterator[Report]:
    """Applies `plan` inside a `with` block and puts everything back on exit.

    On exit, also after an exception, every `trainable` flag and inference mode is
    restored, LoRA adapters added inside are taken out again, and the optimizer is rebuilt for the original trainable set; variables
    that did not train inside the block get their optimizer slots back as they were.
    This is the model-level freeze Keras users expect: freezing model A in a scope
    leaves model B, which shares a layer with A, free to train that layer afterwards.

    Args:
        model: A Keras model.
        plan: The `Plan` to apply inside the block.
        strict: As in `apply`. Defaults to True.

    Yields:
        The `Report` of the model inside the block.

    Example:

    >>> import keras, frostline as fl
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    >>> with fl.scoped(model, fl.Plan().freeze("d")):
    ...     print(len(model.trainable_weights))
    0
    >>> len(model.trainable_weights)
    2
    """
    tree = LayerTree(model)
    flags = FlagSnapshot(tree)
    had_adapters = {id(node.layer) for node in tree if lora_rank(node.layer)}
    stash: dict = {}
    report = _apply(model, plan, strict=strict, stash=stash, record=False)
    try:
        yield report
    finally:
        remove_adapters([n.layer for n in LayerTree(model) if lora_rank(n.layer) and id(n.layer) not in had_adapters])
        flags.restore()
        sync(model, _stash=stash)


def _check_trainable_set(model: keras.layers.Layer, resolution: Resolution) -> None:
    wanted = {id(v) for v in resolution.trainable_variables}
    actual = {id(v) for v in model.trainable_weights}
    if wanted != actual:
        missing = [v.path for v in resolution.trainable_variables if id(v) not in actual]
        extra = [v.path for v in model.trainable_weights if id(v) not in wanted]
        raise TrainableSetMismatch(
            "frostline could not make Keras train exactly the resolved variables; the "
            f"model's flags were restored. Not trainable but should be: {missing[:5]}; "
            f"trainable but should not be: {extra[:5]}."
        )
