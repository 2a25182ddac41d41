"""apply, sync and scoped: the only code that changes a model's flags and compiled state."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import keras

from frostline.model.modes import is_forced_inference, set_inference
from frostline.apply.optimizer import (
    OptimizerState,
    install_lr_multipliers,
    lr_multipliers_installed,
    migrate_optimizer,
    model_lr_multipliers,
    optimizer_variables_match,
    set_model_lr_multipliers,
)
from frostline.plan.plan import Plan, Resolution, resolve
from frostline.inspect.report import Report
from frostline.inspect.saving import record_plan
from frostline.model.tree import LayerTree

__all__ = ["FlagSnapshot", "apply", "scoped", "sync"]

# Per model: the trainable set and inference-mode layers at the last sync, and which
# compiled function objects existed then. Functions made after it (by a fit) were traced
# for a set frostline did not see, so the next sync resets them to be safe.
_SYNCED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class FlagSnapshot:
    """Every `trainable` flag of a model, layers and variables, and every inference-mode
    override, to put back later.

    Args:
        tree: `LayerTree(model)`.
    """

    def __init__(self, tree: LayerTree):
        self._model = tree.model
        self._layers = [(node.layer, node.layer.trainable, is_forced_inference(node.layer)) for node in tree]
        self._variables = [(v, v.trainable) for node in tree for v in node.weights]
        self._lr = model_lr_multipliers(tree.model)

    def restore(self) -> None:
        """Puts every flag back as it was when the snapshot was taken."""
        for variable, flag in self._variables:
            variable.trainable = flag
        for layer, flag, inference in self._layers:
            # Not the public setter: it recurses into sublayers and would overwrite them.
            layer._trainable = flag
            set_inference(layer, inference)
        set_model_lr_multipliers(self._model, self._lr)

    def _key(self) -> tuple:
        return (
            [(id(l), f, i) for l, f, i in self._layers],
            [(id(v), f) for v, f in self._variables],
            sorted((k, m) for k, (_, m) in self._lr.items()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlagSnapshot):
            return NotImplemented
        return self._key() == other._key()


class CompiledState:
    """What `sync` may change on a compiled model: the optimizer's structure and state
    references, the compiled functions and Keras's record of compiled flags."""

    def __init__(self, model: keras.layers.Layer):
        self.model = model
        optimizer = getattr(model, "optimizer", None)
        self.optimizer = OptimizerState(optimizer) if optimizer is not None else None
        self.functions = {
            name: getattr(model, name) for name in _FUNCTIONS if hasattr(model, name)
        }
        self.compiled_flags = getattr(model, "_compiled_trainable_state", None)
        self.synced = _SYNCED.get(model)

    def restore(self) -> None:
        if self.optimizer is not None:
            self.optimizer.restore()
        for name, function in self.functions.items():
            setattr(self.model, name, function)
        if self.compiled_flags is not None:
            self.model._compiled_trainable_state = self.compiled_flags
        if self.synced is None:
            _SYNCED.pop(self.model, None)
        else:
            _SYNCED[self.model] = self.synced


_FUNCTIONS = ("train_function", "test_function", "predict_function")


def _sync_key(model: keras.layers.Layer) -> tuple:
    return (
        tuple(id(v) for v in model.trainable_variables),
        tuple(sorted((k, m) for k, (_, m) in model_lr_multipliers(model).items())),
        tuple(id(l) for l in model._flatten_layers() if is_forced_inference(l)),
        tuple(id(getattr(model, name, None)) for name in _FUNCTIONS),
    )


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
        node.layer._trainable = resolution.container_trainable(node)
        set_inference(node.layer, resolution.decision(node).inference)
    set_model_lr_multipliers(
        resolution.tree.model,
        {id(d.variable): (d.variable, d.lr) for d in resolution.variables if not d.is_state},
    )


def sync(model: keras.layers.Layer, *, _stash: dict | None = None) -> bool:
    """Makes the model's current flags take effect on the next `fit`, without recompiling.

    Use it after setting `layer.trainable` by hand on a compiled model (`fl.apply` does
    it for you). The optimizer is rebuilt in place for the new trainable set: its
    `iterations`, learning-rate schedule position and the slots (Adam moments, momentum)
    of every variable that stays trainable carry over; newly trainable variables start
    with fresh slots; newly frozen ones lose theirs. The compiled train, test and
    predict functions are made anew, so that they are traced for the new set; that works
    between epochs of a running `fit` too.

    Args:
        model: A Keras model, compiled or not (an uncompiled model needs nothing).

    Returns:
        True if anything had to change.

    Raises:
        TypeError: if the optimizer cannot be rebuilt (a custom optimizer without a
            faithful `get_config`). The model is then exactly as it was.

    Example:

    >>> import keras, numpy as np, frostline as fl
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="a"),
    ...                           keras.layers.Dense(1, name="b")])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    >>> model.get_layer("a").trainable = False
    >>> fl.sync(model)
    True
    >>> len(model.optimizer.variables)  # iterations, learning rate, 2 x 2 moments of b
    6
    """
    key = _sync_key(model)
    optimizer = getattr(model, "optimizer", None)
    built = optimizer is not None and getattr(optimizer, "built", False)
    stale_optimizer = built and not optimizer_variables_match(optimizer, model.trainable_variables)
    wanted_lr = model_lr_multipliers(model)
    if optimizer is not None and lr_multipliers_installed(optimizer) != {
        optimizer._var_key(v): m for v, m in wanted_lr.values()
    }:
        stale_optimizer = True
    has_functions = any(getattr(model, name, None) is not None for name in _FUNCTIONS)
    stale_functions = has_functions and _SYNCED.get(model) != key
    if not stale_optimizer and not stale_functions:
        untangle_optimizer_buffers(model)
        _SYNCED[model] = key
        return False
    state = CompiledState(model)
    try:
        if stale_optimizer:
            if built:
                migrate_optimizer(optimizer, model.trainable_variables, stash=_stash)
            install_lr_multipliers(optimizer, wanted_lr)
        for name in ("test_function", "predict_function"):
            if hasattr(model, name):
                setattr(model, name, None)
        if getattr(model, "train_function", None) is not None:
            # Made anew rather than dropped: a fit in progress (a callback between
            # epochs) calls `model.train_function` on.
            model.make_train_function(force=True)
        if hasattr(model, "_compiled_trainable_state"):
            # Keras warns at the next fit that flags changed since compile; they have
            # now taken effect.
            model._compiled_trainable_state = {l: l.trainable for l in model._flatten_layers()}
        untangle_optimizer_buffers(model)
        _SYNCED[model] = _sync_key(model)
    except BaseException:
        state.restore()
        raise
    return True


def untangle_optimizer_buffers(model: keras.layers.Layer) -> None:
    """Gives optimizer variables that share a buffer with a model variable their own.

    With EMA on JAX, Keras's end-of-fit overwrite leaves model variables and their
    averages sharing one buffer, and the next fit fails donating it twice.
    """
    optimizer = getattr(model, "optimizer", None)
    if keras.backend.backend() != "jax" or optimizer is None or not getattr(optimizer, "use_ema", False):
        return
    model_buffers = {id(v._value) for v in model.weights if getattr(v, "_value", None) is not None}
    for v in optimizer.variables:
        if getattr(v, "_value", None) is not None and id(v._value) in model_buffers:
            v.assign(keras.ops.copy(v._value))


def apply(model: keras.layers.Layer, plan: Plan, *, strict: bool = True) -> Report:
    """Resolves `plan` against `model`, sets its flags, and makes them take effect.

    The whole plan is validated before anything changes. Afterwards
    `model.trainable_weights` is exactly the resolved set, the selected layers run in the
    resolved mode, and on a compiled model the next `fit` trains exactly that set with
    the optimizer state kept (see `sync`): no recompiling, also from a callback between
    epochs. After any error the flags,
    modes and optimizer are exactly as they were.

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
    return _apply(model, plan, strict=strict, stash=None, record=True)


def _apply(model, plan: Plan, *, strict: bool, stash: dict | None, record: bool) -> Report:
    tree = LayerTree(model)
    resolution = resolve(plan, tree, strict=strict)
    flags = FlagSnapshot(tree)
    compiled = CompiledState(model)
    try:
        _write(resolution)
        _check_trainable_set(model, resolution)
        if FlagSnapshot(tree) != flags:
            sync(model, _stash=stash)
        else:  # nothing changed, nothing to retrace
            untangle_optimizer_buffers(model)
        if record:
            record_plan(model, plan)
    except BaseException:
        flags.restore()
        compiled.restore()
        raise
    return Report(LayerTree(model), resolution)


@contextlib.contextmanager
def scoped(model: keras.layers.Layer, plan: Plan, *, strict: bool = True) -> Iterator[Report]:
    """Applies `plan` inside a `with` block and puts everything back on exit.

    On exit, also after an exception, every `trainable` flag and inference mode is
    restored and the optimizer is rebuilt for the original trainable set; variables
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
    stash: dict = {}
    report = _apply(model, plan, strict=strict, stash=stash, record=False)
    try:
        yield report
    finally:
        flags.restore()
        sync(model, _stash=stash)


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
