"""A phase's learning rate: set on the optimizer without changing its structure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from frostline import _keras, _state
from frostline.errors import FrostlineTypeError

__all__ = ["PhaseSchedule", "set_learning_rate"]


@keras.saving.register_keras_serializable(package="frostline")
class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A phase's learning-rate schedule, counted from the phase's first step.

    The optimizer's `iterations` keeps counting across phases; the schedule sees
    `iterations - offset`.

    Args:
        schedule: A Keras `LearningRateSchedule`.
        offset: The optimizer's `iterations` when the phase began.

    Example:

    >>> import keras
    >>> s = PhaseSchedule(keras.optimizers.schedules.ExponentialDecay(1.0, 1, 0.5), 10)
    >>> float(s(11))
    0.5
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, offset: int):
        self.schedule = schedule
        self.offset = int(offset)

    def __call__(self, step):
        return self.schedule(keras.ops.maximum(keras.ops.subtract(step, self.offset), 0))

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "offset": self.offset}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PhaseSchedule:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["offset"])


def set_learning_rate(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | None,
    *,
    offset: int | None = None,
    what: str = "this phase",
) -> None:
    """Gives the optimizer a new rate, keeping its variables (and so its saved state).

    A float is assigned to the optimizer's rate variable. A schedule stands in for that
    variable, counted from `offset` (default: the optimizer's `iterations` now); the
    variable stays among the optimizer's variables so that its structure does not
    change. The model's train function is traced again with the new rate.

    Args:
        model: The model the optimizer trains.
        optimizer: Its optimizer.
        learning_rate: A float, a schedule, or None (nothing changes).
        offset: For a schedule, the step it counts from. Defaults to None: now.
        what: Names the caller in errors. Defaults to "this phase".

    Raises:
        FrostlineTypeError: for a float when the optimizer was made with a schedule (it
            has no rate variable to assign), or for a `MultiOptimizer` (its sub-optimizers
            have the rates).
    """
    if learning_rate is None:
        return
    if _keras.is_multi_optimizer(optimizer):
        raise FrostlineTypeError(
            f"{what} sets learning_rate={learning_rate!r}, but a MultiOptimizer has no learning rate of "
            "its own: each sub-optimizer has its rate. Leave the phase's learning_rate unset and set "
            "the sub-optimizers' rates, or use Plan.lr multipliers."
        )
    record = _state.optimizer_state(optimizer)
    current = _keras.learning_rate_value(optimizer)
    if record.rate_variable is None and isinstance(current, keras.Variable):
        record.rate_variable = current
    variable = record.rate_variable
    if isinstance(learning_rate, float):
        if variable is None:
            raise FrostlineTypeError(
                f"{what} sets learning_rate={learning_rate}, but the optimizer was made with a "
                "schedule. Give the optimizer a float learning rate and each phase its schedule."
            )
        _keras.set_learning_rate_value(optimizer, variable)
        variable.assign(learning_rate)
    else:
        if offset is None:
            offset = _keras.iterations(optimizer)
        _keras.set_learning_rate_value(optimizer, PhaseSchedule(learning_rate, offset))
    model.train_function = None  # traced again with the new rate


def rate_variable_while(optimizer: keras.optimizers.Optimizer):
    """The rate variable a phase schedule stands in for, or None; `migrate_optimizer`
    puts it back while it builds the twin, so that both have the same structure."""
    record = _state.peek(optimizer, _state.OptimizerState)
    return None if record is None else record.rate_variable
