"""Phase and FineTune: transfer learning as a sequence of phases, one optimizer throughout."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import keras
import numpy as np

from frostline.apply.apply import apply
from frostline.apply.sync import sync
from frostline.cache.policy import ActivationCache, samples
from frostline.train.distribute import DistributedRun
from frostline.apply.multipliers import model_lr_multipliers, set_model_lr_multipliers
from frostline.train.checkpoint import CheckpointError, config_differences, load_into, read_latest, write_checkpoint
from frostline.plan.plan import Plan
from frostline.inspect.report import Report

__all__ = ["FineTune", "Phase", "PhaseSchedule"]

_LR_VARIABLE = "_frostline_lr_variable"


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@keras.saving.register_keras_serializable(package="frostline")
class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A phase's learning-rate schedule, counted from the phase's first step.

    The optimizer's `iterations` keeps counting across phases; the schedule sees
    `iterations - offset`.

    Args:
        schedule: A Keras `LearningRateSchedule`.
        offset: The optimizer's `iterations` when the phase began.
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


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of fine-tuning.

    Args:
        name: A name for logs, history and plots.
        epochs: The phase's epochs (its most, with `early_stopping`).
        plan: Applied on top of the previous phases' plans when the phase begins.
            Defaults to an empty plan (the frozen set stays as it is).
        learning_rate: A float or a Keras `LearningRateSchedule` (counted from the
            phase's first step). Defaults to None: the optimizer's rate as it is.
        callbacks: Keras callbacks for this phase only. Defaults to none.
        early_stopping: Ends the phase early: the arguments of
            `keras.callbacks.EarlyStopping` (`monitor`, `patience`, `min_delta`,
            `mode`, `restore_best_weights`). Defaults to None: all `epochs` run.
        cache: Compute the frozen front of the model once and train the rest on its
            outputs: `"auto"` (default) where that gives the same result, else plain
            `fit` with the reason on the phase line; `"memory"` or `"disk"` (files
            streamed a batch at a time) insist, and are an error where the cache
            cannot apply; `False` never.
        cache_dtype: Store cached activations in this dtype, e.g. `"float16"`.
            Defaults to None: as computed.

    Example:

    >>> Phase("head", epochs=5, plan=Plan().freeze("base"), learning_rate=1e-3)
    Phase('head', epochs=5, plan=Plan(freeze base), learning_rate=0.001)
    """

    name: str
    epochs: int
    plan: Plan = dataclasses.field(default_factory=Plan)
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | None = None
    callbacks: tuple = ()
    early_stopping: Mapping[str, Any] | None = None
    cache: Literal["auto", "memory", "disk"] | bool = "auto"
    cache_dtype: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Expected a phase name (a non-empty string). Received: name={self.name!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(
                f"Phase {self.name!r}: expected epochs to be a positive integer. Received: epochs={self.epochs!r}"
            )
        if not isinstance(self.plan, Plan):
            raise TypeError(f"Phase {self.name!r}: expected plan to be a frostline Plan. Received: {self.plan!r}")
        lr = self.learning_rate
        if lr is not None and not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
                raise ValueError(
                    f"Phase {self.name!r}: expected learning_rate to be a positive number or a "
                    f"keras.optimizers.schedules.LearningRateSchedule. Received: {lr!r}"
                )
            object.__setattr__(self, "learning_rate", float(lr))
        object.__setattr__(self, "callbacks", tuple(self.callbacks))
        if self.cache not in ("auto", "memory", "disk", True, False):
            raise ValueError(
                f"Phase {self.name!r}: expected cache='auto', 'memory', 'disk' or False. Received: cache={self.cache!r}"
            )
        if self.cache is True:
            object.__setattr__(self, "cache", "auto")
        if self.early_stopping is not None:
            keras.callbacks.EarlyStopping(**self.early_stopping)  # fails early on bad arguments
            object.__setattr__(self, "early_stopping", dict(self.early_stopping))

    def __repr__(self) -> str:
        parts = [repr(self.name), f"epochs={self.epochs}", f"plan={self.plan}"]
        if self.learning_rate is not None:
            parts.append(f"learning_rate={self.learning_rate!r}")
        if self.early_stopping:
            parts.append(f"early_stopping={self.early_stopping!r}")
        if self.callbacks:
            parts.append(f"callbacks={list(self.callbacks)!r}")
        return f"Phase({', '.join(parts)})"


class _PhaseStop(keras.callbacks.EarlyStopping):
    """EarlyStopping that ends one phase, not the run."""

    triggered = False

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.model.stop_training:
            self.triggered = True


class _Forward(keras.callbacks.Callback):
    """Gives the user's callbacks one training run across all phases: epoch and batch
    events are passed on; train begin and end are sent once, by the runner.

    Batch-level events are forwarded only when one of the user's callbacks handles them:
    Keras dispatches asynchronously, and so faster, when no callback does.
    """

    _EPOCH_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_test_begin", "on_test_end")
    _BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end")

    def __init__(self, callbacks: keras.callbacks.CallbackList, *, train_hooks: bool = False):
        super().__init__()
        self.callbacks = callbacks
        users = list(callbacks.callbacks)
        if train_hooks:  # a phase's own callbacks see each phase as a run
            self.on_train_begin = callbacks.on_train_begin
            self.on_train_end = callbacks.on_train_end
        for name in self._EPOCH_HOOKS + self._BATCH_HOOKS:
            needed = name in self._EPOCH_HOOKS or any(
                not getattr(getattr(c, name), "_is_default", False) for c in users
            )
            if needed:
                setattr(self, name, getattr(callbacks, name))
        forward_epoch_end = self.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            forward_epoch_end(epoch, logs)
            # The callbacks watch the user's model; a cached phase fits the remainder.
            if callbacks.model is not None and callbacks.model.stop_training and self.model is not None:
                self.model.stop_training = True

        self.on_epoch_end = on_epoch_end


class _Reseed(keras.callbacks.Callback):
    """Seeds every random generator from (seed, epoch) as each epoch begins, so that an
    epoch's shuffling and dropout do not depend on how the run got there (a resumed
    run draws what the uninterrupted one drew)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        derived = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0] % (2**31 - 1))
        keras.utils.set_random_seed(derived)


class _Record(keras.callbacks.Callback):
    """Keeps every epoch's logs and, with a checkpoint directory, writes a checkpoint."""

    def __init__(self, runner: FineTune, phase_index: int, phase_start: int, phase_iterations: int, stopper):
        super().__init__()
        self.runner = runner
        self.phase_index = phase_index
        self.phase_start = phase_start
        self.phase_iterations = phase_iterations
        self.stopper = stopper

    def on_epoch_end(self, epoch, logs=None):
        runner = self.runner
        runner._records.append([epoch, {k: float(v) for k, v in (logs or {}).items()}])
        if runner.checkpoint_dir is None or not runner._distributed.is_chief:
            return
        state = {
            "epoch_done": epoch + 1,
            "phase": self.phase_index,
            "phase_start_epoch": self.phase_start,
            "phase_start_iterations": self.phase_iterations,
            "phase_finished": bool(self.stopper and self.stopper.triggered)
            or epoch + 1 >= self.phase_start + runner.phases[self.phase_index].epochs,
            "history": runner._records,
            "phases_run": runner._phases_run + [
                {"name": runner.phases[self.phase_index].name, "start_epoch": self.phase_start,
                 "epochs": epoch + 1 - self.phase_start}
            ],
            "config": runner._run_config,
        }
        # runner.model, not self.model: a cached phase fits the remainder model.
        write_checkpoint(runner.checkpoint_dir, f"epoch-{epoch + 1:05d}", runner.model, runner.optimizer, state)


class FineTune:
    """Runs phases in order with Keras's own `fit`, one optimizer throughout.

    Each phase applies its plan on top of the previous ones (no recompiling: the
    optimizer keeps its state), sets its learning rate, and fits for its epochs.
    Epochs are numbered across phases; the returned History has every epoch of every
    phase and, in `history.phases`, where each phase began.

    Args:
        model: A Keras model.
        phases: The `Phase`s, in order.
        optimizer: A Keras optimizer or its name. Defaults to `"adam"`.
        loss: As in `model.compile`.
        metrics: As in `model.compile`. Defaults to None.
        checkpoint_dir: Where to write a checkpoint after every epoch (model and
            optimizer variables, the run's position, plans, history and RNG seed),
            atomically; `fit(..., resume=True)` continues from the last one. Defaults
            to None: no checkpoints.
        seed: Seeds Python, NumPy and the backend from (seed, epoch) at every epoch,
            which makes runs, and resumed runs, repeatable. Defaults to None.
        cache_memory_limit: With `Phase(cache="auto")`, activations up to this many
            bytes stay in memory, larger ones stream from disk. Defaults to
            1 GiB.
        cache_dir: Where disk caches go. Defaults to `checkpoint_dir/cache`, or a
            temporary folder.
        distribution: Train data-parallel: a `keras.distribution.DataParallel` on JAX
            (`frostline.data_parallel(4)`), or a `tf.distribute` strategy on TensorFlow
            (build the model under its scope). A model built without it is copied onto
            the devices. Each batch is split over the devices, so `batch_size` (and
            the last batch) must divide by their number. Defaults to None: one device.
        compile_kwargs: Other arguments of `model.compile`. Defaults to None.

    Example:

    >>> import keras, numpy as np, frostline as fl
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)], name="base")
    >>> model = keras.Sequential([base, keras.layers.Dense(1, name="head")])
    >>> run = fl.FineTune(model, [
    ...     fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), learning_rate=1e-2),
    ...     fl.Phase("all", epochs=1, plan=fl.Plan().unfreeze("base"), learning_rate=1e-3),
    ... ], loss="mse")
    >>> history = run.fit(np.ones((8, 4)), np.ones((8, 1)), verbose=0)
    >>> history.epoch, [(p["name"], p["start_epoch"]) for p in history.phases]
    ([0, 1, 2], [('head', 0), ('all', 2)])
    """

    def __init__(
        self,
        model: keras.Model,
        phases: Sequence[Phase],
        *,
        optimizer: str | keras.optimizers.Optimizer = "adam",
        loss: Any = None,
        metrics: Any = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        cache_memory_limit: int = 2**30,
        cache_dir: str | os.PathLike[str] | None = None,
        distribution: Any = None,
        compile_kwargs: Mapping[str, Any] | None = None,
    ):
        phases = list(phases)
        if not phases:
            raise ValueError("Expected at least one Phase. Received an empty list.")
        for phase in phases:
            if not isinstance(phase, Phase):
                raise TypeError(f"Expected frostline Phase objects. Received: {phase!r}")
        names = [p.name for p in phases]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"Expected distinct phase names. Received {duplicated} more than once.")
        self.model = model
        self.phases = phases
        self._distributed = DistributedRun(distribution)
        with self._distributed.scope():  # TensorFlow places variables where they are made
            self.optimizer = keras.optimizers.get(optimizer)
        self.loss = loss
        self.metrics = metrics
        self.compile_kwargs = dict(compile_kwargs or {})
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.seed = seed
        self.reports: dict[str, Report] = {}
        optimizer_config = dict(self.optimizer.get_config())
        optimizer_config.pop("name", None)  # Keras numbers names per session: adam, adam_1
        self._optimizer_config = _json_safe({"class": type(self.optimizer).__name__, "config": optimizer_config})
        self._records: list = []
        self._phases_run: list = []
        self._run_config: dict = {}
        self._cache = ActivationCache(self, memory_limit=cache_memory_limit, directory=cache_dir)

    def config(self, **fit_settings: Any) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed: phases, optimizer, loss,
        seed and the given fit settings, as plain data."""
        phases = []
        for p in self.phases:
            lr = p.learning_rate
            if lr is not None and not isinstance(lr, float):
                lr = keras.saving.serialize_keras_object(lr)
            phases.append({
                "name": p.name, "epochs": p.epochs, "plan": p.plan.to_dict(),
                "learning_rate": lr, "early_stopping": p.early_stopping,
            })
        loss = self.loss if isinstance(self.loss, (str, type(None))) else type(self.loss).__name__
        return _json_safe({
            "phases": phases, "optimizer": self._optimizer_config, "loss": loss,
            "seed": self.seed, **fit_settings,
        })

    def _compile(self) -> None:
        if getattr(self.model, "optimizer", None) is self.optimizer and self.model.compiled:
            return
        self.model.compile(optimizer=self.optimizer, loss=self.loss, metrics=self.metrics, **self.compile_kwargs)

    def _set_learning_rate(self, phase: Phase, offset: int | None = None) -> None:
        opt = self.optimizer
        lr = phase.learning_rate
        if lr is None:
            return
        variable = opt.__dict__.get(_LR_VARIABLE)
        if variable is None and isinstance(opt._learning_rate, keras.Variable):
            variable = opt.__dict__[_LR_VARIABLE] = opt._learning_rate
        if isinstance(lr, float):
            if variable is None:
                raise TypeError(
                    f"Phase {phase.name!r} sets learning_rate={lr}, but the optimizer was made "
                    "with a schedule. Give the optimizer a float learning rate and each phase "
                    "its schedule."
                )
            opt.__dict__["_learning_rate"] = variable
            variable.assign(lr)
        else:
            # Set in place of the rate variable, which stays among the optimizer's
            # variables so that its structure (and saved state) does not change.
            if offset is None:
                offset = int(keras.ops.convert_to_numpy(opt._iterations))
            opt.__dict__["_learning_rate"] = PhaseSchedule(lr, offset)
        self.model.train_function = None  # traced again with the new rate

    def _phase_line(self, index: int, phase: Phase, report: Report) -> str:
        frozen = [r.path for r in report.rows if r.depth == 1 and r.state == "frozen"]
        partial = [r.path for r in report.rows if r.depth == 1 and r.state == "partial"]
        lr = phase.learning_rate
        lr_text = "as before" if lr is None else (f"{lr:g}" if isinstance(lr, float) else type(lr).__name__)
        described = ", ".join(frozen) if frozen else "nothing"
        if partial:
            described += f"; partly frozen: {', '.join(partial)}"
        return (
            f"phase {index + 1}/{len(self.phases)} '{phase.name}': {report.totals_line} · "
            f"frozen: {described} · learning rate {lr_text} · up to {phase.epochs} "
            + ("epoch" if phase.epochs == 1 else "epochs")
            + (f" · {self._distributed.describe()}" if self._distributed.replicas > 1 else "")
        )

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        *,
        validation_data: Any = None,
        batch_size: int | None = None,
        callbacks: Sequence[keras.callbacks.Callback] | None = None,
        verbose: str | int = "auto",
        resume: bool = False,
        phase_lines: bool | None = None,
        **fit_kwargs: Any,
    ) -> keras.callbacks.History:
        """Runs every phase; returns one History over all of them.

        Args:
            x, y, validation_data, batch_size, verbose: As in `model.fit` (numpy
                arrays, `tf.data.Dataset`, `keras.utils.PyDataset`; a generator must
                yield forever, with `steps_per_epoch`).
            callbacks: Keras callbacks for the whole run: they see one training run
                whose epochs are numbered across phases. An EarlyStopping here ends
                the run; `Phase.early_stopping` ends a phase.
            phase_lines: Print a line as each phase begins saying what is frozen.
                Defaults to None: when `verbose` is not 0.
            resume: Continue from the last checkpoint in `checkpoint_dir`: the model,
                optimizer, position, history and plans are restored and the remaining
                epochs run. Defaults to False.
            **fit_kwargs: Other arguments of `model.fit` (`steps_per_epoch`,
                `class_weight`, `shuffle`, ...). `epochs` and `initial_epoch` are set
                by the phases.

        Raises:
            CheckpointError: with `resume=True`, when there is no checkpoint or it was
                written by a run with a different configuration (the message lists
                which fields differ).
            TypeError, ValueError: before anything runs or is written, for what
                `check` refuses: `epochs` or `initial_epoch` passed, `resume=True`
                without a `checkpoint_dir`, and, with a `distribution`, batches the
                devices cannot split or variables TensorFlow cannot place.

        Returns:
            A `keras.callbacks.History`; `history.phases` lists each phase's `name`,
            `start_epoch` and `epochs` run.
        """
        self.check(x, y, validation_data=validation_data, batch_size=batch_size, resume=resume, **fit_kwargs)
        if phase_lines is None:
            phase_lines = verbose != 0
        with self._distributed.scope():
            return self._fit(x, y, validation_data, batch_size, callbacks, verbose, resume, phase_lines, fit_kwargs)

    def check(
        self,
        x: Any = None,
        y: Any = None,
        *,
        validation_data: Any = None,
        batch_size: int | None = None,
        resume: bool = False,
        **fit_kwargs: Any,
    ) -> None:
        """Raises the error `fit` would raise for these arguments before training
        starts, without running or writing anything.

        Raises:
            TypeError: for `epochs` or `initial_epoch`, which the phases set.
            ValueError: for `resume=True` without a `checkpoint_dir`, or, with a
                `distribution` and array inputs, a batch size (or a last batch) that
                the devices cannot split equally (with `validation_split`, in
                either part), arrays that Keras would try to split over several
                hosts, or, on TensorFlow, a model or optimizer made outside the
                strategy's scope.
        """
        for key in ("epochs", "initial_epoch"):
            if key in fit_kwargs:
                raise TypeError(f"FineTune.fit sets {key!r} from the phases; do not pass it. Received: {key}={fit_kwargs[key]!r}")
        if resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from. Received: checkpoint_dir=None")
        self._distributed.check_variables(list(self.model.variables) + list(self.optimizer.variables))
        # Datasets and generators bring their own batches, which cannot be seen here.
        validation_batch = fit_kwargs.get("validation_batch_size") or batch_size
        if samples(x) is not None:
            self._distributed.check_arrays()
            n = samples(x)
            split = fit_kwargs.get("validation_split") or 0.0
            if split and validation_data is None:
                # Where Keras cuts: the first floor(n * (1 - split)) samples train.
                cut = int(math.floor(n * (1.0 - split)))
                self._distributed.check_batches(cut, batch_size, "training data")
                self._distributed.check_batches(n - cut, validation_batch, "validation split")
            else:
                self._distributed.check_batches(n, batch_size, "training data")
        if isinstance(validation_data, (tuple, list)) and validation_data and samples(validation_data[0]) is not None:
            self._distributed.check_batches(samples(validation_data[0]), validation_batch, "validation data")

    def _state_variables(self, model: keras.Model) -> list:
        return list(model.variables) + list(model.metrics_variables) + list(self.optimizer.variables)

    def _fit(self, x, y, validation_data, batch_size, callbacks, verbose, resume, phase_lines, fit_kwargs):
        self._run_config = self.config(batch_size=batch_size, shuffle=fit_kwargs.get("shuffle", True))
        self._compile()
        self._distributed.place(self._state_variables(self.model))
        self._records, self._phases_run = [], []
        start_phase, epoch, offset, resumed_start = 0, 0, None, None
        if resume:
            start_phase, epoch, offset, resumed_start = self._restore(phase_lines)
        user = keras.callbacks.CallbackList(list(callbacks or []), model=self.model)
        user.on_train_begin()
        logs: dict = {}
        for index in range(start_phase, len(self.phases)):
            phase = self.phases[index]
            # A resumed phase began before the checkpoint; a new one begins now.
            phase_start = resumed_start if index == start_phase and resumed_start is not None else epoch
            report = apply(self.model, phase.plan)
            self.reports[phase.name] = report
            self._distributed.place(self._state_variables(self.model))
            self._set_learning_rate(phase, offset)
            phase_iterations = offset if offset is not None else int(keras.ops.convert_to_numpy(self.optimizer._iterations))
            offset = None
            if phase_lines:
                print(self._phase_line(index, phase, report), flush=True)
            stopper = _PhaseStop(**phase.early_stopping) if phase.early_stopping else None
            phase_callbacks = (
                ([_Reseed(self.seed)] if self.seed is not None else [])
                + [_Forward(keras.callbacks.CallbackList(list(phase.callbacks), model=self.model), train_hooks=True),
                   _Forward(user)]
                + ([stopper] if stopper else [])
                + [_Record(self, index, phase_start, phase_iterations, stopper)]
            )
            with self._cache.for_phase(phase, x, y, validation_data, batch_size, fit_kwargs) as cached:
                if phase_lines:
                    print(f"  cache: {cached.description}", flush=True)
                fit_model = cached.model or self.model
                if cached.model is not None:
                    fit_model.compile(optimizer=self.optimizer, loss=self.loss, metrics=self.metrics,
                                      **self.compile_kwargs)
                    # The optimizer in the remainder's variable order, state and
                    # learning-rate multipliers kept.
                    set_model_lr_multipliers(fit_model, model_lr_multipliers(self.model))
                    sync(fit_model)
                    self._distributed.place(self._state_variables(fit_model))
                result = fit_model.fit(
                    cached.x,
                    cached.y,
                    validation_data=cached.validation,
                    batch_size=cached.batch_size,
                    epochs=phase_start + phase.epochs,
                    initial_epoch=epoch,
                    callbacks=phase_callbacks,
                    verbose=verbose,
                    **cached.fit_kwargs,
                )
                if cached.model is not None:
                    sync(self.model)
            epoch += len(result.epoch)
            self._phases_run.append({"name": phase.name, "start_epoch": phase_start, "epochs": epoch - phase_start})
            if result.history:
                logs = {k: v[-1] for k, v in result.history.items()}
            if fit_model.stop_training and not (stopper and stopper.triggered):
                break  # a callback of the user's ended the run
        user.on_train_end(logs)
        return self._history()

    def _history(self) -> keras.callbacks.History:
        history = keras.callbacks.History()
        history.set_model(self.model)
        history.epoch = [int(e) for e, _ in self._records]
        keys: list[str] = []
        for _, logs in self._records:
            keys.extend(k for k in logs if k not in keys)
        history.history = {k: [logs.get(k, math.nan) for _, logs in self._records] for k in keys}
        history.phases = [dict(p) for p in self._phases_run]
        return history

    def _restore(self, announce: bool) -> tuple[int, int, int | None, int | None]:
        """Loads the last checkpoint. Returns the phase to run, the next epoch, and for a
        phase cut short its schedule offset and first epoch."""
        path, state = read_latest(self.checkpoint_dir)
        differences = config_differences(state.get("config", {}), self._run_config)
        if differences:
            raise CheckpointError(
                f"The checkpoint in {self.checkpoint_dir!r} was written by a run with a "
                "different configuration; resuming would not continue that run. Differing "
                "fields (checkpoint -> now): " + "; ".join(differences)
            )
        phase = int(state["phase"])
        for earlier in self.phases[: phase + 1]:
            self.reports[earlier.name] = apply(self.model, earlier.plan)
        if not self.optimizer.built:
            self.optimizer.build(self.model.trainable_variables)
        load_into(path, self.model, self.optimizer)
        self._records = [list(r) for r in state["history"]]
        self._phases_run = [dict(p) for p in state["phases_run"]]
        epoch = int(state["epoch_done"])
        if announce:
            print(f"resuming from {path} after epoch {epoch}", flush=True)
        if state["phase_finished"]:
            return phase + 1, epoch, None, None
        self._phases_run.pop()  # the phase goes on
        return phase, epoch, int(state["phase_start_iterations"]), int(state["phase_start_epoch"])
