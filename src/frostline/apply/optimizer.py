"""Optimizer-state migration: rebuild an optimizer for a new trainable set, state kept.

Keras builds an optimizer once, for the variables that were trainable then, and refuses
(or silently ignores) any other set afterwards. `migrate_optimizer` rebuilds it in place
for a new set: `iterations`, the learning rate and its schedule position, and the slots
(moments, accumulators, EMA averages) of every variable that stays trainable are kept;
newly trainable variables get fresh slots, exactly as a fresh `build` would make them;
variables that left the set lose theirs.

How: a twin optimizer (`from_config`) is built on the new set, which gives the exact
structure Keras would build; the real optimizer then adopts that structure, with its
own variable objects wherever a variable keeps its place.
"""

from __future__ import annotations

import warnings
import weakref

import keras
from keras.src.utils.tracking import DotNotTrackScope

__all__ = [
    "OptimizerState",
    "install_lr_multipliers",
    "lr_multipliers_installed",
    "migrate_optimizer",
    "optimizer_variables_match",
]

_EMA_SLOTS = "_model_variables_moving_average"


def optimizer_variables_match(optimizer: keras.optimizers.Optimizer, variables: list) -> bool:
    """Whether a built optimizer was built for exactly `variables`, in that order."""
    built_for = list(optimizer._trainable_variables)
    return len(built_for) == len(variables) and all(a is b for a, b in zip(built_for, variables))


class OptimizerState:
    """Every attribute of an optimizer (and the ones it wraps) to put back on failure.

    Args:
        optimizer: A Keras optimizer.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer):
        self._saved = []
        for opt in _optimizers_within(optimizer):
            self._saved.append(
                (opt, dict(opt.__dict__), list(opt._variables), set(opt._tracker.stored_ids["variables"]))
            )

    def restore(self) -> None:
        """Puts every attribute back as it was when this state was taken."""
        for opt, attributes, variables, stored in self._saved:
            opt.__dict__.clear()
            opt.__dict__.update(attributes)
            _set_contents(opt._variables, variables)
            opt._tracker.stored_ids["variables"] = stored


def _set_contents(target: list, items: list) -> None:
    # Not `target[:] = items`: TensorFlow's list wrapper compares old and new items
    # with `!=`, which Keras variables answer elementwise.
    del target[:]
    target.extend(items)


def _optimizers_within(optimizer: keras.optimizers.Optimizer) -> list:
    """The optimizer and every optimizer it holds (LossScaleOptimizer, MultiOptimizer)."""
    found, stack = [], [optimizer]
    while stack:
        opt = stack.pop()
        if any(opt is f for f in found):
            continue
        found.append(opt)
        for value in list(vars(opt).values()):
            if isinstance(value, keras.optimizers.Optimizer):
                stack.append(value)
            elif isinstance(value, (list, tuple)):
                stack.extend(v for v in value if isinstance(v, keras.optimizers.Optimizer))
    return found


def _twin(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    if type(optimizer).__name__ == "MultiOptimizer":
        raise TypeError(
            "frostline cannot rebuild a MultiOptimizer for a new trainable set. Use one "
            "optimizer with Plan.lr multipliers for per-layer rates, or recompile."
        )
    try:
        with warnings.catch_warnings():
            # Keras's own get_config can warn under numpy 2; that is no reason to fail.
            warnings.simplefilter("ignore", DeprecationWarning)
            return type(optimizer).from_config(optimizer.get_config())
    except Exception as e:  # a custom optimizer without a faithful config
        raise TypeError(
            f"frostline cannot rebuild optimizer {type(optimizer).__name__} for the new "
            f"trainable set: recreating it from get_config() failed ({e}). Give the "
            "optimizer a get_config()/from_config() pair, or recompile the model."
        ) from e


def migrate_optimizer(
    optimizer: keras.optimizers.Optimizer,
    variables: list,
    *,
    stash: dict | None = None,
) -> None:
    """Rebuilds a built optimizer in place for a new list of trainable variables.

    Args:
        optimizer: A built Keras optimizer.
        variables: The model's new trainable variables, in `model.trainable_variables`
            order.
        stash: Optional dict used to keep the slots of variables that leave the set,
            keyed by variable, and to give them back when they return (`fl.scoped`
            uses it to restore the optimizer as it was). Defaults to None: dropped.

    Raises:
        TypeError: if the optimizer cannot be recreated from its config.
    """
    if not optimizer.built or optimizer_variables_match(optimizer, variables):
        return
    # A phase schedule stands in for the rate variable, which stays tracked: put the
    # variable back while the twin is made, so that both have the same structure.
    schedule = optimizer.__dict__.get("_learning_rate")
    variable = optimizer.__dict__.get("_frostline_lr_variable")
    if variable is not None and schedule is not variable:
        optimizer.__dict__["_learning_rate"] = variable
        try:
            migrate_optimizer(optimizer, variables, stash=stash)
        finally:
            optimizer.__dict__["_learning_rate"] = schedule
        return
    twin = _twin(optimizer)
    pairs = list(zip(_optimizers_within(optimizer), _optimizers_within(twin)))
    before = {id(t): (dict(t.__dict__), list(t._variables)) for _, t in pairs}
    twin.build(list(variables))
    state = OptimizerState(optimizer)
    try:
        for real, copy in pairs:
            _adopt(real, copy, *before[id(copy)], stash)
    except BaseException:
        state.restore()
        raise


def _is_slot_list(value: object, variables: list) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == len(variables)
        and len(value) > 0
        and all(v is None or isinstance(v, keras.Variable) for v in value)
        and any(isinstance(v, keras.Variable) for v in value)
    )


def _adopt(real, twin, twin_attrs_before: dict, twin_init_variables: list, stash: dict | None) -> None:
    """Gives `real` the structure `twin.build` made, keeping real's variables where
    a model variable keeps its place."""
    old_vars = list(real._trainable_variables)
    new_vars = list(twin._trainable_variables)
    old_index = {real._var_key(v): i for i, v in enumerate(old_vars)}
    changed = [
        name for name, value in vars(twin).items()
        if name not in ("_variables", "_tracker")
        and (name not in twin_attrs_before or twin_attrs_before[name] is not value)
    ]
    mapping: dict[int, keras.Variable] = {}
    # Variables made in __init__ (iterations, learning rate) come first in both.
    for twin_var, real_var in zip(twin_init_variables, real._variables):
        mapping[id(twin_var)] = real_var

    new_attrs: dict[str, object] = {}
    for name in changed:
        value = getattr(twin, name)
        old_value = real.__dict__.get(name)
        if isinstance(value, keras.Variable):
            keep = isinstance(old_value, keras.Variable) and tuple(old_value.shape) == tuple(value.shape)
            mapping[id(value)] = old_value if keep else value
            new_attrs[name] = mapping[id(value)]
        elif _is_slot_list(value, new_vars):
            old_list = old_value if _is_slot_list(old_value, old_vars) else None
            slots = []
            for j, (var, fresh) in enumerate(zip(new_vars, value)):
                kept = None
                i = old_index.get(real._var_key(var))
                if old_list is not None and i is not None:
                    kept = old_list[i]
                elif stash is not None:
                    kept = stash.get((id(real), name, id(var)))
                if kept is not None and fresh is not None and tuple(kept.shape) == tuple(fresh.shape):
                    mapping[id(fresh)] = kept
                    slots.append(kept)
                else:
                    if fresh is not None and name == _EMA_SLOTS:
                        # A zero average would drag the weights towards zero: start
                        # the average where the weights are.
                        fresh.assign(keras.ops.copy(var.value))
                    slots.append(fresh)
            if stash is not None and old_list is not None:
                for i, var in enumerate(old_vars):
                    if old_list[i] is not None and not any(var is v for v in new_vars):
                        stash[(id(real), name, id(var))] = old_list[i]
            new_attrs[name] = type(value)(slots) if isinstance(value, tuple) else slots
        elif name not in ("_trainable_variables", "_trainable_variables_indices", "built"):
            new_attrs[name] = value

    _set_contents(real._variables, [mapping.get(id(v), v) for v in twin._variables])
    real._tracker.stored_ids["variables"] = {id(v) for v in real._variables}
    # As in Keras's own build: the lists are set without tracking, since `_variables`
    # already holds exactly the optimizer's variables.
    with DotNotTrackScope():
        for name, value in new_attrs.items():
            setattr(real, name, value)
        real._trainable_variables = new_vars
        real._trainable_variables_indices = dict(twin._trainable_variables_indices)
        real.built = True


_LR_MAP = "_frostline_lr_multipliers"
# Per model: {id(variable): (variable, multiplier)}, set by `apply`, installed on the
# model's optimizer by `sync`.
_MODEL_LR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def lr_multiplier(model: keras.layers.Layer, variable: keras.Variable) -> float:
    """The learning-rate multiplier frostline gives `variable` in `model` (1.0 if none)."""
    return _MODEL_LR.get(model, {}).get(id(variable), (variable, 1.0))[1]


def set_model_lr_multipliers(model: keras.layers.Layer, multipliers: dict[int, tuple]) -> None:
    """Records `{id(variable): (variable, multiplier)}` for `model`; `sync` installs it."""
    kept = {k: (v, float(m)) for k, (v, m) in multipliers.items() if float(m) != 1.0}
    if kept:
        _MODEL_LR[model] = kept
    else:
        _MODEL_LR.pop(model, None)


def model_lr_multipliers(model: keras.layers.Layer) -> dict[int, tuple]:
    """`{id(variable): (variable, multiplier)}` recorded for `model`."""
    return dict(_MODEL_LR.get(model, {}))
_PATCHED = ("update_step", "_apply_weight_decay", "_backend_update_step")


def _sequential_update_step(opt):
    """The per-variable update loop for `opt`, also for PyTorch's vectorised optimizers.

    PyTorch's parallel optimizers update every variable in one call with one learning
    rate; per-variable multipliers need the per-variable path their base class keeps.
    """
    for cls in type(opt).__mro__:
        if cls.__name__ == "TorchParallelOptimizer":
            return super(cls, opt)._backend_update_step
    return None


def install_lr_multipliers(optimizer: keras.optimizers.Optimizer, multipliers: dict[int, tuple]) -> None:
    """Makes each variable's update use the learning rate times its multiplier.

    Args:
        optimizer: A Keras optimizer (wrapped optimizers are reached too).
        multipliers: `{id(variable): (variable, multiplier)}`; variables not listed, or
            with multiplier 1, update as usual. An empty dict removes the multipliers.

    The optimizer's `update_step` gets `learning_rate * multiplier` for the variable,
    which is exact for every optimizer (Adam included, where scaling the gradient would
    not be); decoupled weight decay is scaled the same way.
    """
    for opt in _optimizers_within(optimizer):
        for name in _PATCHED:
            opt.__dict__.pop(name, None)
        opt.__dict__.pop(_LR_MAP, None)
        scaled = {opt._var_key(v): float(m) for v, m in multipliers.values() if float(m) != 1.0}
        if not scaled:
            continue
        opt.__dict__[_LR_MAP] = scaled
        _patch(opt)


def lr_multipliers_installed(optimizer: keras.optimizers.Optimizer) -> dict:
    """`{variable key: multiplier}` installed on the optimizer (merged over wrapped ones)."""
    found: dict = {}
    for opt in _optimizers_within(optimizer):
        found.update(opt.__dict__.get(_LR_MAP, {}))
    return found


def _patch(opt) -> None:
    cls = type(opt)
    multipliers = opt.__dict__[_LR_MAP]

    def update_step(gradient, variable, learning_rate):
        m = multipliers.get(opt._var_key(variable), 1.0)
        if m != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, m)
        return cls.update_step(opt, gradient, variable, learning_rate)

    def _apply_weight_decay(variables):
        plain = [v for v in variables if multipliers.get(opt._var_key(v), 1.0) == 1.0]
        if plain:  # PyTorch's version fails on an empty list
            cls._apply_weight_decay(opt, plain)
        if opt.weight_decay is None:
            return
        for v in variables:
            m = multipliers.get(opt._var_key(v), 1.0)
            if m != 1.0 and opt._use_weight_decay(v):
                lr = keras.ops.cast(opt.learning_rate, v.dtype)
                wd = keras.ops.cast(opt.weight_decay, v.dtype)
                v.assign(v - v * wd * lr * m)

    opt.__dict__["update_step"] = update_step
    opt.__dict__["_apply_weight_decay"] = _apply_weight_decay
    sequential = _sequential_update_step(opt)
    if sequential is not None:
        opt.__dict__["_backend_update_step"] = sequential
