"""Resuming a run: the configuration a checkpoint must agree with, the checks of its
`state.json`, and putting a model, its optimizer and the run's log back where the last
checkpoint left them — all of it or, after any error, nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import keras

from frostline import _state
from frostline.apply.adapters import remove_adapters
from frostline.apply.apply import FlagSnapshot, apply
from frostline.apply.optimizer import OptimizerSnapshot
from frostline.apply.sync import CompiledState
from frostline.errors import CheckpointError
from frostline.inspect.report import Report
from frostline.model.adapters import lora_rank
from frostline.model.tree import LayerTree
from frostline.train.checkpoint import FILES, STATE, Checkpoint, read_latest, verify_checkpoint
from frostline.train.log import RunLog
from frostline.train.phase import Phase
from frostline.train.randomness import check_random_state, inexact_inputs, restore_random_state

__all__ = ["ResumePoint", "check_state", "config_differences", "load_into", "loss_description",
           "optimizer_description", "restore", "run_config"]

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


def loss_description(loss: Any) -> Any:
    """A loss as plain data that changes whenever what it computes does: a name as given,
    a `keras.losses.Loss` as its class and full config (`from_logits` included), a
    function by its module and name; dicts and lists of losses item by item.

    Example:

    >>> import keras
    >>> loss_description(keras.losses.SparseCategoricalCrossentropy(from_logits=True))["config"]["from_logits"]
    True
    """
    if loss is None or isinstance(loss, str):
        return loss
    if isinstance(loss, dict):
        return {str(k): loss_description(v) for k, v in loss.items()}
    if isinstance(loss, (list, tuple)):
        return [loss_description(v) for v in loss]
    if isinstance(loss, keras.losses.Loss):
        try:
            config = loss.get_config()
        except NotImplementedError:
            config = None
        return _json_safe({"class": f"{type(loss).__module__}.{type(loss).__qualname__}", "config": config})
    name = getattr(loss, "__qualname__", type(loss).__qualname__)
    return {"function": f"{getattr(loss, '__module__', None)}.{name}"}


def run_config(phases: Sequence[Phase], *, optimizer: dict[str, Any], loss: Any, seed: int | None,
               **fit_settings: Any) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed, as plain data.

    Args:
        phases: The run's phases.
        optimizer: `optimizer_description(optimizer)`.
        loss: The loss as given to `compile`, described by `loss_description`.
        seed: The run's seed.
        **fit_settings: Settings of `fit` that change what the run computes
            (`batch_size`, `shuffle`).
    """
    described = []
    for phase in phases:
        config = phase.get_config()
        described.append({key: config[key] for key in _PHASE_FIELDS})
    return _json_safe({"phases": described, "optimizer": optimizer, "loss": loss_description(loss), "seed": seed,
                       **fit_settings})


# ---- state.json ----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_record(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and _is_int(value[0]) and isinstance(value[1], dict)
            and all(isinstance(k, str) and _is_number(v) for k, v in value[1].items()))


def _is_phase_run(value: Any) -> bool:
    return (isinstance(value, dict) and sorted(value) == ["epochs", "name", "start_epoch"]
            and isinstance(value["name"], str) and _is_int(value["start_epoch"]) and _is_int(value["epochs"]))


# field: (what it should be, the test)
_FIELDS = {
    "epoch_done": ("an integer", _is_int),
    "phase": ("an integer", _is_int),
    "phase_start_epoch": ("an integer", _is_int),
    "phase_start_iterations": ("an integer", _is_int),
    "phase_finished": ("true or false", lambda v: isinstance(v, bool)),
    "history": ("a list of [epoch, {metric: number}]", lambda v: isinstance(v, list) and all(map(_is_record, v))),
    "phases_run": ("a list of {'name', 'start_epoch', 'epochs'}",
                   lambda v: isinstance(v, list) and all(map(_is_phase_run, v))),
    "config": ("an object", lambda v: isinstance(v, dict)),
}


def _short(value: Any, limit: int = 200) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _refuse(path: str, field: str, expected: str, received: Any) -> CheckpointError:
    shown = _short(received)
    return CheckpointError(
        f"{os.path.join(path, STATE)!r}: expected {field} to be {expected}. Received: {field}={shown}. "
        "Nothing was restored. Start a new run instead (without resume=True, or without --resume)."
    )


def _check_types(path: str, state: dict[str, Any]) -> None:
    for field, (expected, test) in _FIELDS.items():
        if field not in state:
            raise _refuse(path, field, expected, "(missing)")
        if not test(state[field]):
            raise _refuse(path, field, expected, state[field])


def _check_position(path: str, state: dict[str, Any], phases: list[dict[str, Any]]) -> None:
    """The run's position agrees with itself and with the run's phases."""
    phase = state["phase"]
    if not 0 <= phase < len(phases):
        raise _refuse(path, "phase", f"a phase's number, 0 to {len(phases) - 1}", phase)
    epochs = phases[phase]["epochs"]
    begun_by = sum(p["epochs"] for p in phases[:phase])
    start = state["phase_start_epoch"]
    if not 0 <= start <= begun_by:
        raise _refuse(path, "phase_start_epoch", f"0 to {begun_by} (phase {phase} begins after the ones before)",
                      start)
    done = state["epoch_done"]
    if not start < done <= start + epochs:
        raise _refuse(path, "epoch_done", f"within the run's epochs: {start + 1} to {start + epochs} (phase "
                      f"{phases[phase]['name']!r} began at epoch {start} and has {epochs})", done)
    if done == start + epochs and not state["phase_finished"]:
        raise _refuse(path, "phase_finished", f"true (epoch {done} is the last of phase {phase})", False)
    if state["phase_start_iterations"] < 0:
        raise _refuse(path, "phase_start_iterations", "0 or more", state["phase_start_iterations"])
    epochs_recorded = [record[0] for record in state["history"]]
    if epochs_recorded != list(range(done)):
        raise _refuse(path, "history", f"one record for each of the epochs 0 to {done - 1}, in order",
                      epochs_recorded)
    _check_phases_run(path, state, phases)


def _check_phases_run(path: str, state: dict[str, Any], phases: list[dict[str, Any]]) -> None:
    run = state["phases_run"]
    phase, done = state["phase"], state["epoch_done"]
    if [p["name"] for p in run] != [p["name"] for p in phases[: phase + 1]]:
        raise _refuse(path, "phases_run", f"the phases {[p['name'] for p in phases[: phase + 1]]} in order",
                      [p["name"] for p in run])
    begins = 0
    for i, (entry, configured) in enumerate(zip(run, phases)):
        last = i == phase
        epochs = done - state["phase_start_epoch"] if last else None
        if entry["start_epoch"] != begins or not 0 <= entry["epochs"] <= configured["epochs"] \
                or (last and (entry["start_epoch"] != state["phase_start_epoch"] or entry["epochs"] != epochs)):
            expected = (f"phase {entry['name']!r} beginning at epoch {begins}"
                        + (f" with {epochs} epochs done" if last else f", with 0 to {configured['epochs']} epochs"))
            raise _refuse(path, f"phases_run[{i}]", expected, entry)
        begins = entry["start_epoch"] + entry["epochs"]


def check_state(path: str, state: dict[str, Any], config: dict[str, Any]) -> None:
    """Checks a checkpoint's `state.json` field by field: every field there with its
    type, the configuration equal to the run's, and the position (phase, epochs,
    history, phases run) within the run's phases.

    Args:
        path: The checkpoint's directory, for the messages.
        state: Its `state.json`, parsed.
        config: The run's `run_config`.

    Raises:
        CheckpointError: naming the file and the first field that is wrong, or every
            field of the configuration that differs.
    """
    _check_types(path, state)
    if "random_state" in state and (problem := check_random_state(state["random_state"])) is not None:
        raise _refuse(path, "random_state", problem, state["random_state"])
    if "shuffle_seed" in state and not (type(state["shuffle_seed"]) is int and 0 <= state["shuffle_seed"] < 2**63):
        raise _refuse(path, "shuffle_seed", "an integer, 0 to 2**63 - 1", state["shuffle_seed"])
    try:
        differences = config_differences(state["config"], config)
    except RecursionError:
        raise _refuse(path, "config", "the run's configuration", "(nested too deeply)") from None
    if differences:
        raise CheckpointError(
            f"The checkpoint in {os.path.dirname(path)!r} was written by a run with a "
            "different configuration; resuming would not continue that run. Differing "
            "fields (checkpoint -> now): " + "; ".join(differences)
        )
    _check_position(path, state, config["phases"])


def _check_arrays(checkpoint: Checkpoint, filename: str, variables: list, what: str) -> None:
    arrays = checkpoint.arrays[filename]
    if len(arrays) != len(variables):
        raise CheckpointError(
            f"The checkpoint's {what} has {len(arrays)} variables; the model now has "
            f"{len(variables)}. Was it written for another model?"
        )
    for i, (value, v) in enumerate(zip(arrays, variables)):
        if tuple(value.shape) != tuple(v.shape):
            raise CheckpointError(
                f"The checkpoint's {what} variable {i} ({checkpoint.paths[filename][i]!r}) has shape "
                f"{value.shape}; {v.path} has {tuple(v.shape)}."
            )


def load_into(checkpoint: Checkpoint, model: keras.Model, optimizer) -> None:
    """Loads a verified checkpoint's variables into a model and its (built) optimizer.
    Every count and shape is checked before the first variable is assigned.

    Raises:
        CheckpointError: for a model or optimizer whose variables do not match.
    """
    _check_arrays(checkpoint, FILES[0], model.variables, "model")
    _check_arrays(checkpoint, FILES[1], optimizer.variables, "optimizer")
    for filename, variables in zip(FILES, (model.variables, optimizer.variables)):
        for value, v in zip(checkpoint.arrays[filename], variables):
            v.assign(value)


def config_differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """The fields where two configurations differ, as `path: stored -> current` lines."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append(f"{where}: (absent) -> {_short(current[key])}")
            elif key not in current:
                out.append(f"{where}: {_short(stored[key])} -> (absent)")
            else:
                out.extend(config_differences(stored[key], current[key], where))
        return out
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        out = []
        for i, (a, b) in enumerate(zip(stored, current)):
            out.extend(config_differences(a, b, f"{prefix}[{i}]"))
        return out
    return [] if stored == current else [f"{prefix}: {_short(stored)} -> {_short(current)}"]


# ---- restoring -----------------------------------------------------------------------------


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
        random_state: For a phase cut short, the global random states to put back as
            its next epoch begins (`capture_random_state`); else None (a checkpoint at
            a phase's end has them put back by `restore`, before the next phase).
    """

    path: str | None
    phase: int
    epoch: int
    schedule_offset: int | None
    phase_start: int | None
    reports: dict[str, Report]
    random_state: dict[str, Any] | None = None

    @classmethod
    def fresh(cls) -> ResumePoint:
        """The point a run that does not resume starts from: phase 0, epoch 0."""
        return cls(None, 0, 0, None, None, {})


def _load(checkpoint: Checkpoint, model: keras.Model, optimizer: keras.optimizers.Optimizer,
          phases: Sequence[Phase]) -> dict[str, Report]:
    """Applies the plans up to the checkpoint's phase and loads its variables; after any
    error the model's flags, modes, adapters, recorded plans and optimizer are put back."""
    tree = LayerTree(model)
    flags = FlagSnapshot(tree)
    compiled = CompiledState(model)
    own = OptimizerSnapshot(optimizer)
    had_adapters = {id(node.layer) for node in tree if lora_rank(node.layer)}
    record = _state.peek(model, _state.ModelState)
    plan = None if record is None else record.plan
    try:
        reports = {earlier.name: apply(model, earlier.plan) for earlier in phases[: checkpoint.state["phase"] + 1]}
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        load_into(checkpoint, model, optimizer)
    except BaseException:
        remove_adapters([n.layer for n in LayerTree(model) if lora_rank(n.layer) and id(n.layer) not in had_adapters])
        flags.restore()
        own.restore()
        compiled.restore()
        if _state.peek(model, _state.ModelState) is not None:
            _state.model_state(model).plan = plan
        raise
    return reports


def _warn_if_inexact(path: str, state: dict[str, Any], inputs: Any) -> None:
    """Warns once when the resumed run cannot draw what the uninterrupted run drew."""
    if "random_state" in state:
        reason = None if inputs is None else inexact_inputs(inputs)
    else:
        reason = "the checkpoint has no random_state (it was written by an earlier version of frostline)"
    if reason is not None:
        warnings.warn(f"Resuming from {path!r}: the resumed run's data order (or random draws) will differ from "
                      f"the uninterrupted run's, so its weights will too: {reason}. See 'Exact resume' in "
                      "docs/checkpoints.md.", stacklevel=6)  # the caller of FineTune.fit


def restore(directory: str, *, config: dict[str, Any], model: keras.Model, optimizer: keras.optimizers.Optimizer,
            phases: Sequence[Phase], log: RunLog, inputs: Any = None) -> ResumePoint:
    """Loads the last checkpoint in `directory` into the model, its optimizer and `log`,
    with the plans of the phases up to the checkpoint's applied.

    Every file is verified (SHA-256 digests, sizes, no NaN or inf) and `state.json`
    checked field by field before anything changes; a model or optimizer that does not
    match is found before the first variable is assigned, and the plans applied for it
    are undone. After a `CheckpointError` the model is as it was.

    Args:
        directory: The run's checkpoint folder.
        config: The run's `run_config`, which the checkpoint's must equal.
        model: The model, compiled with `optimizer`.
        optimizer: Its optimizer (built here if it is not yet).
        phases: The run's phases.
        log: The run's log; takes the checkpoint's records and phases.
        inputs: The run's `FitInputs`, to warn when they cannot be resumed exactly.
            Defaults to None: no warning about the inputs.

    The global random generators (Python's, NumPy's, torch's) are put back as
    they were when the checkpoint was written, so the next epoch shuffles and drops out
    as it did in the uninterrupted run: here for a checkpoint at a phase's end, as the
    next epoch begins for one inside a phase (`ResumePoint.random_state`).

    Raises:
        CheckpointError: when there is no checkpoint, it does not verify, its state is
            not one this run can continue (naming the file and field), or it was
            written by a run with a different configuration (naming the fields).
    """
    path, state = read_latest(directory)
    check_state(path, state, config)
    checkpoint = verify_checkpoint(path, state)
    reports = _load(checkpoint, model, optimizer, phases)
    log.restore(state)
    _warn_if_inexact(path, state, inputs)
    random_state = state.get("random_state")
    phase, epoch = state["phase"], state["epoch_done"]
    if state["phase_finished"]:
        if random_state is not None:  # as they were when the uninterrupted run went on to the next phase
            restore_random_state(random_state)
        return ResumePoint(checkpoint.path, phase + 1, epoch, None, None, reports)
    return ResumePoint(checkpoint.path, phase, epoch, state["phase_start_iterations"], state["phase_start_epoch"],
                       reports, random_state)
