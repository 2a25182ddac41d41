"""Learning-rate multipliers: each variable's update uses the rate times its multiplier.

`fl.apply` records a model's multipliers (from `Plan.lr` rules); `sync` installs them on
the model's optimizer by giving it its own `update_step`, which multiplies the learning
rate for the variables that have one. That is exact for every optimizer (Adam included,
where scaling the gradient would not be); decoupled weight decay is scaled the same way.
"""

from __future__ import annotations

import keras

from frostline import _keras, _state

__all__ = [
    "install_lr_multipliers",
    "lr_multiplier",
    "lr_multipliers_installed",
    "model_lr_multipliers",
    "optimizers_within",
    "set_model_lr_multipliers",
]


def lr_multiplier(model: keras.layers.Layer, variable: keras.Variable) -> float:
    """The learning-rate multiplier frostline gives `variable` in `model` (1.0 if none)."""
    return model_lr_multipliers(model).get(id(variable), (variable, 1.0))[1]


def set_model_lr_multipliers(model: keras.layers.Layer, multipliers: dict[int, tuple]) -> None:
    """Records `{id(variable): (variable, multiplier)}` for `model`; `sync` installs it."""
    kept = {k: (v, float(m)) for k, (v, m) in multipliers.items() if float(m) != 1.0}
    if kept or _state.peek(model, _state.ModelState) is not None:
        _state.model_state(model).lr_multipliers = kept


def model_lr_multipliers(model: keras.layers.Layer) -> dict[int, tuple]:
    """`{id(variable): (variable, multiplier)}` recorded for `model`."""
    record = _state.peek(model, _state.ModelState)
    return dict(record.lr_multipliers) if record else {}


def optimizers_within(optimizer: keras.optimizers.Optimizer) -> list:
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


def install_lr_multipliers(optimizer: keras.optimizers.Optimizer, multipliers: dict[int, tuple]) -> None:
    """Makes each variable's update use the learning rate times its multiplier.

    Args:
        optimizer: A Keras optimizer (wrapped optimizers are reached too).
        multipliers: `{id(variable): (variable, multiplier)}`; variables not listed, or
            with multiplier 1, update as usual. An empty dict removes the multipliers.
    """
    for opt in optimizers_within(optimizer):
        _keras.remove_update_hooks(opt)
        scaled = {_keras.variable_key(opt, v): float(m) for v, m in multipliers.values() if float(m) != 1.0}
        record = _state.optimizer_state(opt)
        record.lr_multipliers = scaled
        if scaled:
            _hook(opt, scaled)


def lr_multipliers_installed(optimizer: keras.optimizers.Optimizer) -> dict:
    """`{variable key: multiplier}` installed on the optimizer (merged over wrapped ones)."""
    found: dict = {}
    for opt in optimizers_within(optimizer):
        record = _state.peek(opt, _state.OptimizerState)
        if record is not None:
            found.update(record.lr_multipliers)
    return found


def _hook(opt: keras.optimizers.Optimizer, multipliers: dict) -> None:
    update_step_of_class = _keras.class_update_step(opt)
    weight_decay_of_class = _keras.class_apply_weight_decay(opt)

    def multiplier(variable) -> float:
        return multipliers.get(_keras.variable_key(opt, variable), 1.0)

    def update_step(gradient, variable, learning_rate):
        m = multiplier(variable)
        if m != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, m)
        return update_step_of_class(opt, gradient, variable, learning_rate)

    def apply_weight_decay(variables):
        plain = [v for v in variables if multiplier(v) == 1.0]
        if plain:  # PyTorch's version fails on an empty list
            weight_decay_of_class(opt, plain)
        if opt.weight_decay is None:
            return
        for v in variables:
            m = multiplier(v)
            if m != 1.0 and _keras.uses_weight_decay(opt, v):
                lr = keras.ops.cast(opt.learning_rate, v.dtype)
                wd = keras.ops.cast(opt.weight_decay, v.dtype)
                v.assign(v - v * wd * lr * m)

    _keras.install_update_hooks(opt, update_step, apply_weight_decay)
