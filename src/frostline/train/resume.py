"""Resuming a run: the configuration a checkpoint must agree with, and putting a model,
its optimizer and the run's log back where the last checkpoint left them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import keras

from frostline.apply.apply import apply
from frostline.errors import CheckpointError
from frostline.inspect.report import Report
from frostline.train.checkpoint import config_differences, load_into, read_latest
from frostline.train.log import RunLog
from frostline.train.phase import Phase

__all__ = ["ResumePoint", "optimizer_description", "restore", "run_config"]

# The parts of a phase's config that change what a run computes; a checkpoint must agree
# on them. (`cache` and `cache_dtype` change how, not what.)
_PHASE_FIELDS = ("name", "epochs", "plan", "learning_rate", "early_stopping")


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def optimizer_description(optimizer: keras.optimizers.Optimizer) -> dict[str, Any]:
    """The optimizer's class and config as plain data, without its name (Keras numbers
    names per session: adam, adam_1)."""
    config = dict(optimizer.get_config())
    config.pop("name", None)
    return _json_safe({"class": type(optimizer).__name__, "config": config})


def run_config(phases: Sequence[Phase], *, optimizer: dict[str, Any], loss: Any, seed: int | None,
               **fit_settings: Any) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed, as plain data.

    Args:
        phases: The run's phases.
        optimizer: `optimizer_description(optimizer)`.
        loss: The loss as given to `compile`; an object is named by its class.
        seed: The run's seed.
        **fit_settings: Settings of `fit` that change what the run computes
            (`batch_size`, `shuffle`).
    """
    described = []
    for phase in phases:
        config = phase.get_config()
        described.append({key: config[key] for key in _PHASE_FIELDS})
    loss = loss if isinstance(loss, (str, type(None))) else type(loss).__name__
    return _json_safe({"phases": described, "optimizer": optimizer, "loss": loss, "seed": seed, **fit_settings})


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a restored run goes on.

    Attributes:
        path: The checkpoint restored (None: a run that begins anew).
        phase: The phase to run next, counted from 0.
        epoch: The next epoch.
        schedule_offset: For a phase cut short, the optimizer's `iterations` when it
            began (its schedule counts from there); None for a phase that begins anew.
        phase_start: For a phase cut short, the epoch it began with; else None.
        reports: The `Report` of every phase applied so far, by name.
    """

    path: str | None
    phase: int
    epoch: int
    schedule_offset: int | None
    phase_start: int | None
    reports: dict[str, Report]

    @classmethod
    def fresh(cls) -> ResumePoint:
        """The point a run that does not resume starts from: phase 0, epoch 0."""
        return cls(None, 0, 0, None, None, {})


def restore(directory: str, *, config: dict[str, Any], model: keras.Model, optimizer: keras.optimizers.Optimizer,
            phases: Sequence[Phase], log: RunLog) -> ResumePoint:
    """Loads the last checkpoint in `directory` into the model, its optimizer and `log`,
    with the plans of the phases up to the checkpoint's applied.

    Args:
        directory: The run's checkpoint folder.
        config: The run's `run_config`, which the checkpoint's must equal.
        model: The model, compiled with `optimizer`.
        optimizer: Its optimizer (built here if it is not yet).
        phases: The run's phases.
        log: The run's log; takes the checkpoint's records and phases.

    Raises:
        CheckpointError: when there is no checkpoint, it cannot be read, or it was
            written by a run with a different configuration (naming the fields).
    """
    path, state = read_latest(directory)
    differences = config_differences(state.get("config", {}), config)
    if differences:
        raise CheckpointError(
            f"The checkpoint in {directory!r} was written by a run with a "
            "different configuration; resuming would not continue that run. Differing "
            "fields (checkpoint -> now): " + "; ".join(differences)
        )
    phase = int(state["phase"])
    reports = {earlier.name: apply(model, earlier.plan) for earlier in phases[: phase + 1]}
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    load_into(path, model, optimizer)
    log.restore(state)
    epoch = int(state["epoch_done"])
    if state["phase_finished"]:
        return ResumePoint(path, phase + 1, epoch, None, None, reports)
    return ResumePoint(path, phase, epoch, int(state["phase_start_iterations"]), int(state["phase_start_epoch"]), reports)
