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

import keras

from frostline import _keras, _state
from frostline.apply.learning_rate import rate_variable_while
from frostline.apply.multipliers import optimizers_within
from frostline.errors import FrostlineTypeError

__all__ = ["OptimizerSnapshot", "migrate_optimizer", "optimizer_variables_match"]


def optimizer_variables_match(optimizer: keras.optimizers.Optimizer, variables: list) -> bool:
    """Whether a built optimizer was built for exactly `variables`, in that order."""
    built_for = _keras.built_for(optimizer)
    return len(built_for) == len(variables) and all(a is b for a, b in zip(built_for, variables))


class OptimizerSnapshot:
    """Every attribute of an optimizer (and the ones it wraps), and what frostline
    remembers about them, to put back on failure.

    Args:
        optimizer: A Keras optimizer.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer):
        self._saved = []
        for opt in optimizers_within(optimizer):
            record = _state.peek(opt, _state.OptimizerState)
            self._saved.append((
                opt, dict(opt.__dict__), list(_keras.variable_list(opt)), _keras.tracked_variable_ids(opt),
                None if record is None else record.copy(),
            ))

    def restore(self) -> None:
        """Puts every attribute back as it was when this snapshot was taken."""
        for opt, attributes, variables, tracked, record in self._saved:
            opt.__dict__.clear()
            opt.__dict__.update(attributes)
            _keras.set_variables(opt, variables, tracked)
            _state.replace(opt, _state.OptimizerState, record)


def _migrate_multi(optimizer: keras.optimizers.Optimizer, variables: list, stash: dict | None) -> None:
    """A `MultiOptimizer`: each sub-optimizer is migrated for the variables its map gives
    it (state kept as for any optimizer), then the wrapper records the new assignment."""
    snapshot = OptimizerSnapshot(optimizer)
    try:
        shares: dict[int, list] = {}
        for v in variables:
            sub = _keras.sub_optimizer_for(optimizer, v)
            shares.setdefault(id(sub), []).append(v)
        for sub in _keras.sub_optimizers(optimizer):
            share = shares.get(id(sub), [])
            if sub.built:
                migrate_optimizer(sub, share, stash=stash)
            elif share:
                sub.build(share)
        _keras.set_multi_assignment(optimizer, list(variables))
    except TypeError as e:
        snapshot.restore()
        raise FrostlineTypeError(f"frostline cannot rebuild this MultiOptimizer for the new trainable set: {e}") from e
    except BaseException:
        snapshot.restore()
        raise


def _twin(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    try:
        with warnings.catch_warnings():
            # Keras's own get_config can warn under numpy 2; that is no reason to fail.
            warnings.simplefilter("ignore", DeprecationWarning)
            return type(optimizer).from_config(optimizer.get_config())
    except Exception as e:  # a custom optimizer without a faithful config
        raise FrostlineTypeError(
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
        FrostlineTypeError: if the optimizer cannot be recreated from its config.
    """
    if not optimizer.built or optimizer_variables_match(optimizer, variables):
        return
    if _keras.is_multi_optimizer(optimizer):
        _migrate_multi(optimizer, variables, stash)
        return
    # A phase schedule stands in for the rate variable, which stays tracked: put the
    # variable back while the twin is made, so that both have the same structure.
    schedule = _keras.learning_rate_value(optimizer)
    variable = rate_variable_while(optimizer)
    if variable is not None and schedule is not variable:
        _keras.set_learning_rate_value(optimizer, variable)
        try:
            migrate_optimizer(optimizer, variables, stash=stash)
        finally:
            _keras.set_learning_rate_value(optimizer, schedule)
        return
    twin = _twin(optimizer)
    pairs = list(zip(optimizers_within(optimizer), optimizers_within(twin)))
    before = {id(t): (dict(t.__dict__), list(_keras.variable_list(t))) for _, t in pairs}
    twin.build(list(variables))
    snapshot = OptimizerSnapshot(optimizer)
    try:
        for real, copy in pairs:
            _adopt(real, copy, *before[id(copy)], stash)
    except BaseException:
        snapshot.restore()
        raise


def _is_slot_list(value: object, variables: list) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == len(variables)
        and len(value) > 0
        and all(v is None or isinstance(v, keras.Variable) for v in value)
        and any(isinstance(v, keras.Variable) for v in value)
    )


class _Adoption:
    """Maps the twin's variables onto the real optimizer's, one attribute at a time."""

    def __init__(self, real, twin, twin_init_variables: list, stash: dict | None):
        self.real, self.stash = real, stash
        self.old_vars = _keras.built_for(real)
        self.new_vars = _keras.built_for(twin)
        self.old_index = {_keras.variable_key(real, v): i for i, v in enumerate(self.old_vars)}
        self.mapping: dict[int, keras.Variable] = {}
        # Variables made in __init__ (iterations, learning rate) come first in both.
        for twin_var, real_var in zip(twin_init_variables, _keras.variable_list(real)):
            self.mapping[id(twin_var)] = real_var

    def variable(self, value: keras.Variable, old_value: object) -> keras.Variable:
        keep = isinstance(old_value, keras.Variable) and tuple(old_value.shape) == tuple(value.shape)
        self.mapping[id(value)] = old_value if keep else value
        return self.mapping[id(value)]

    def slots(self, name: str, value: list | tuple, old_value: object) -> list | tuple:
        old_list = old_value if _is_slot_list(old_value, self.old_vars) else None
        slots = [self._slot(name, var, fresh, old_list) for var, fresh in zip(self.new_vars, value)]
        if self.stash is not None and old_list is not None:
            for i, var in enumerate(self.old_vars):
                if old_list[i] is not None and not any(var is v for v in self.new_vars):
                    self.stash[(id(self.real), name, id(var))] = old_list[i]
        return type(value)(slots) if isinstance(value, tuple) else slots

    def _slot(self, name: str, var, fresh, old_list):
        kept = None
        i = self.old_index.get(_keras.variable_key(self.real, var))
        if old_list is not None and i is not None:
            kept = old_list[i]
        elif self.stash is not None:
            kept = self.stash.get((id(self.real), name, id(var)))
        if kept is not None and fresh is not None and tuple(kept.shape) == tuple(fresh.shape):
            self.mapping[id(fresh)] = kept
            return kept
        if fresh is not None and name == _keras.EMA_SLOTS:
            # A zero average would drag the weights towards zero: start the average
            # where the weights are.
            fresh.assign(keras.ops.copy(var.value))
        return fresh


def _adopt(real, twin, twin_attrs_before: dict, twin_init_variables: list, stash: dict | None) -> None:
    """Gives `real` the structure `twin.build` made, keeping real's variables where
    a model variable keeps its place."""
    adoption = _Adoption(real, twin, twin_init_variables, stash)
    new_attrs: dict[str, object] = {}
    for name, value in vars(twin).items():
        if name in _keras.OPTIMIZER_BOOKKEEPING or twin_attrs_before.get(name, _MISSING) is value:
            continue
        old_value = real.__dict__.get(name)
        if isinstance(value, keras.Variable):
            new_attrs[name] = adoption.variable(value, old_value)
        elif _is_slot_list(value, adoption.new_vars):
            new_attrs[name] = adoption.slots(name, value, old_value)
        else:
            new_attrs[name] = value
    _keras.set_variables(real, [adoption.mapping.get(id(v), v) for v in _keras.variable_list(twin)])
    # As in Keras's own build: the lists are set without tracking, since the variable
    # list already holds exactly the optimizer's variables.
    with _keras.untracked():
        for name, value in new_attrs.items():
            setattr(real, name, value)
    _keras.set_built_for(real, adoption.new_vars, _keras.built_for_indices(twin))


_MISSING = object()
