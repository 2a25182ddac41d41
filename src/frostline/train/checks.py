"""What `FineTune.check` refuses before anything runs or is written, as functions of
explicit values."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from frostline import _keras
from frostline.cache.passes import data_kind, data_reason
from frostline.cache.store import samples
from frostline.errors import FrostlineTypeError, FrostlineValueError, NotCacheable
from frostline.model.modes import draws_random_numbers
from frostline.train.distribute import DistributedRun
from frostline.train.phase import Phase

__all__ = ["check_batches", "check_fit_arguments", "check_resume", "check_run", "checked_phases"]

# Arguments of `model.fit` that the phases set.
SET_BY_PHASES = ("epochs", "initial_epoch")


def checked_phases(phases: Sequence[Phase]) -> list[Phase]:
    """The phases of a run, as a list, checked.

    Raises:
        FrostlineValueError: for no phases, or two with one name.
        FrostlineTypeError: for something that is not a `Phase`.
    """
    phases = list(phases)
    if not phases:
        raise FrostlineValueError("Expected at least one Phase. Received an empty list.")
    for phase in phases:
        if not isinstance(phase, Phase):
            raise FrostlineTypeError(f"Expected frostline Phase objects. Received: {phase!r}")
    names = [p.name for p in phases]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise FrostlineValueError(f"Expected distinct phase names. Received {duplicated} more than once.")
    return phases


def check_fit_arguments(fit_kwargs: Mapping[str, Any]) -> None:
    """Refuses the arguments of `model.fit` that the phases set.

    Raises:
        FrostlineTypeError: for `epochs` or `initial_epoch`.
    """
    for key in SET_BY_PHASES:
        if key in fit_kwargs:
            raise FrostlineTypeError(
                f"FineTune.fit sets {key!r} from the phases; do not pass it. Received: {key}={fit_kwargs[key]!r}"
            )


def check_resume(resume: bool, checkpoint_dir: str | None) -> None:
    """Refuses `resume=True` without a folder to resume from.

    Raises:
        FrostlineValueError: for `resume=True` and `checkpoint_dir=None`.
    """
    if resume and checkpoint_dir is None:
        raise FrostlineValueError("resume=True needs a checkpoint_dir to resume from. Received: checkpoint_dir=None")


def check_batches(distributed: DistributedRun, x: Any, *, validation_data: Any = None, batch_size: int | None = None,
                  fit_kwargs: Mapping[str, Any] | None = None) -> None:
    """Refuses, for array inputs, batches the run's devices cannot split equally (with
    `validation_split`, in either part), and arrays Keras would split over hosts.
    Datasets and generators bring their own batches, which cannot be seen here.

    Args:
        distributed: How the run uses its distribution.
        x: The training inputs.
        validation_data: As in `model.fit`. Defaults to None.
        batch_size: As in `model.fit`. Defaults to None.
        fit_kwargs: The other arguments of `model.fit`. Defaults to None.

    Raises:
        DistributionError: naming the batch and what would divide.
    """
    fit_kwargs = fit_kwargs or {}
    validation_batch = fit_kwargs.get("validation_batch_size") or batch_size
    n = samples(x)
    if n is not None:
        distributed.check_arrays()
        split = fit_kwargs.get("validation_split") or 0.0
        if split and validation_data is None:
            # Where Keras cuts: the first floor(n * (1 - split)) samples train.
            cut = int(math.floor(n * (1.0 - split)))
            distributed.check_batches(cut, batch_size, "training data")
            distributed.check_batches(n - cut, validation_batch, "validation split")
        else:
            distributed.check_batches(n, batch_size, "training data")
    if isinstance(validation_data, (tuple, list)) and validation_data and samples(validation_data[0]) is not None:
        distributed.check_batches(samples(validation_data[0]), validation_batch, "validation data")


def check_cache(phases: Sequence[Phase], model: keras.Model, x: Any, fit_kwargs: Mapping[str, Any], *,
                same_every_pass: bool = False) -> None:
    """Refuses, before anything trains, a phase whose `cache="memory"` or `"disk"`
    cannot read the data (an infinite dataset, a generator without `steps_per_epoch`),
    and `cache_views` on arrays (or on a dataset known to give the same samples on every
    pass, `same_every_pass`) for a model without a random layer.

    Raises:
        NotCacheable: for the first.
        FrostlineValueError: for the second.
    """
    dataset = data_kind(x) is not None
    for phase in phases:
        if dataset and phase.cache in ("memory", "disk"):
            reason = data_reason(x, steps_per_epoch=fit_kwargs.get("steps_per_epoch"))
            if reason is not None:
                raise NotCacheable(f"Phase {phase.name!r} asks for cache={phase.cache!r}, which cannot apply: {reason}")
        if phase.cache_views and (same_every_pass or not dataset) and not any(draws_random_numbers(l) for l in _keras.all_layers(model)):
            raise FrostlineValueError(
                f"Phase {phase.name!r} has cache_views={phase.cache_views}, but nothing random comes before its "
                "frozen part: the model has no random layer (such as RandomFlip) and the data is the same on every "
                "pass. Remove cache_views, or put augmentation layers in front of the frozen base.")


def check_run(distributed: DistributedRun, model: keras.Model, optimizer: keras.optimizers.Optimizer, x: Any, *,
              validation_data: Any = None, batch_size: int | None = None, resume: bool = False,
              checkpoint_dir: str | None = None, fit_kwargs: Mapping[str, Any] | None = None,
              phases: Sequence[Phase] = ()) -> None:
    """Everything `FineTune.check` refuses, in the order it refuses it.

    Raises:
        FrostlineTypeError: for `epochs` or `initial_epoch` in `fit_kwargs`.
        FrostlineValueError: for `resume=True` without a `checkpoint_dir`.
        DistributionError: for variables TensorFlow cannot place, or batches the
            devices cannot split.
        NotCacheable, FrostlineValueError: for what `check_cache` refuses.
    """
    fit_kwargs = fit_kwargs or {}
    check_cache(phases, model, x, fit_kwargs)
    check_fit_arguments(fit_kwargs)
    check_resume(resume, checkpoint_dir)
    distributed.check_variables(list(model.variables) + list(optimizer.variables))
    check_batches(distributed, x, validation_data=validation_data, batch_size=batch_size, fit_kwargs=fit_kwargs)
