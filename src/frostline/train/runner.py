"""`FineTune`: phases run in order with Keras's own `fit`, one optimizer throughout, and
two override points, `on_phase_begin` and `on_phase_end`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from frostline import _keras
from frostline.apply.apply import apply
from frostline.apply.learning_rate import set_learning_rate
from frostline.apply.sync import sync_model
from frostline.cache.policy import CachedPhase, CachePolicy, FitInputs
from frostline.inspect.report import Report
from frostline.train.callbacks import ForwardEvents, PhaseStop, RecordEpochs, Reseed
from frostline.train.checkpoint import folder_lock, write_checkpoint
from frostline.train.checks import check_run, checked_phases
from frostline.train.distribute import DistributedRun
from frostline.train.log import RunLog
from frostline.train.phase import FitCall, Phase, PhaseInfo, phase_line
from frostline.train.compiling import compile_for_run, compile_remainder
from frostline.train.faults import PhaseUndo, phase_error
from frostline.train.randomness import keep_global_random_state
from frostline.train.resume import ResumePoint, optimizer_description, restore, run_config
from frostline.train.shuffling import keyed_shuffle, run_shuffle_seed

__all__ = ["FineTune"]


class FineTune:
    """Runs phases in order with Keras's own `fit`, one optimizer throughout.

    Each phase applies its plan on top of the previous ones (no recompiling: the
    optimizer keeps its state), sets its learning rate, and fits for its epochs.
    Epochs are numbered across phases; the returned History has every epoch of every
    phase and, in `history.phases`, where each phase began.

    A subclass may replace the override points `on_phase_begin(phase, info)` and
    `on_phase_end(phase, info)`; `info` is a `PhaseInfo`.

    Args:
        model: A Keras model.
        phases: The `Phase`s, in order.
        optimizer: A Keras optimizer or its name. Defaults to `"adam"`.
        loss: As in `model.compile`.
        metrics: As in `model.compile`. Defaults to None.
        checkpoint_dir: Where to write a checkpoint after every epoch (model and
            optimizer variables, the run's position, plans, history, random states),
            atomically; `fit(..., resume=True)` continues from the last one. Defaults
            to None: no checkpoints.
        seed: Seeds Python, NumPy and the backend from (seed, epoch) at every epoch,
            which makes runs repeatable (resumed ones repeat without it). Defaults to None.
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

    Attributes:
        model, phases, optimizer, loss, metrics, checkpoint_dir, seed: As given (the
            optimizer made from its name).
        distributed: The `DistributedRun`: how the run uses its distribution
            (`replicas`, `processes`, `is_chief`, `check_batches`, ...).
        reports: The `Report` of each phase run, by phase name.

    Raises:
        FrostlineValueError: for no phases, or two with one name.
        FrostlineTypeError: for a phase that is not a `Phase`, or a distribution that
            is not one.
        DistributionError: for a distribution this backend cannot run.

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
        self.phases = checked_phases(phases)
        self.model = model
        self.distributed = DistributedRun(distribution)
        with self.distributed.scope():  # TensorFlow places variables where they are made
            self.optimizer = keras.optimizers.get(optimizer)
        self.loss = loss
        self.metrics = metrics
        self.compile_kwargs = dict(compile_kwargs or {})
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.seed = seed
        self.reports: dict[str, Report] = {}
        self._optimizer_config = optimizer_description(self.optimizer)
        self._cache = CachePolicy(memory_limit=cache_memory_limit, directory=cache_dir,
                                  checkpoint_dir=self.checkpoint_dir, processes=self.distributed.processes)
        self._log = RunLog()
        self._resume_random_state: dict[str, Any] | None = None  # put back as the resumed epoch begins

    def config(self, **fit_settings: Any) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed: phases, optimizer, loss,
        seed and the given fit settings, as plain data."""
        return run_config(self.phases, optimizer=self._optimizer_config, loss=self.loss, seed=self.seed,
                          **fit_settings)

    # ---- override points --------------------------------------------------------------

    def on_phase_begin(self, phase: Phase, info: PhaseInfo) -> None:
        """Called just before a phase's `fit`: its plan is applied, its learning rate
        set and its cache computed. By default prints the phase line and the cache
        line when `info.phase_lines` is set.

        Args:
            phase: The phase.
            info: A `PhaseInfo` (without `epochs_run` and `logs` yet).

        Example:

        >>> import keras, numpy as np, frostline as fl
        >>> class Sizes(fl.FineTune):
        ...     def on_phase_begin(self, phase, info):
        ...         print(phase.name, info.cached, info.cache_bytes)
        ...     def on_phase_end(self, phase, info):
        ...         print(phase.name, "ran", info.epochs_run, "epochs")
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="body"),
        ...                           keras.layers.Dense(1, name="head")])
        >>> run = Sizes(model, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("body"))], loss="mse")
        >>> _ = run.fit(np.ones((8, 4)), np.ones((8, 1)), verbose=0)
        head True 96
        head ran 2 epochs
        """
        if info.phase_lines:
            print(self.phase_line(phase, info), flush=True)
            print(f"  cache: {info.cache_description}", flush=True)

    def on_phase_end(self, phase: Phase, info: PhaseInfo) -> None:
        """Called after a phase's `fit`, also when a callback ended the run. Does
        nothing by default.

        Args:
            phase: The phase.
            info: A `PhaseInfo` with `epochs_run`, `logs` and `stopped_early`.
        """

    def phase_line(self, phase: Phase, info: PhaseInfo) -> str:
        """The line that says what a phase trains (see `frostline.train.phase.phase_line`),
        with the devices of a data-parallel run."""
        devices = self.distributed.describe() if self.distributed.replicas > 1 else ""
        return phase_line(phase, info, devices=devices)

    # ---- fit --------------------------------------------------------------------------

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
            CheckpointError: with `resume=True`, when there is no checkpoint, it was
                written by a run with a different configuration (the message lists
                which fields differ), or a file of it fails its checks (nothing is
                restored then); and when another run holds the `checkpoint_dir`.
            FrostlineTypeError, FrostlineValueError, DistributionError: before
                anything runs or is written, for what `check` refuses.
            NotCacheable: for a phase whose `cache="memory"` or `"disk"` cannot apply.
            StorageError: when a phase cannot write its cache or a checkpoint (a full
                disk). Whatever stops a phase, it is undone first (flags, modes, learning
                rate, optimizer as before it; see `frostline.train.faults`).

        Returns:
            A `keras.callbacks.History`; `history.phases` lists each phase's `name`,
            `start_epoch` and `epochs` run.
        """
        self.check(x, y, validation_data=validation_data, batch_size=batch_size, resume=resume, **fit_kwargs)
        call = FitCall(
            inputs=FitInputs(x, y, validation_data, batch_size, dict(fit_kwargs)),
            user=keras.callbacks.CallbackList(list(callbacks or []), model=self.model),
            verbose=verbose,
            phase_lines=verbose != 0 if phase_lines is None else bool(phase_lines),
        )
        with self.distributed.scope(), folder_lock(self.checkpoint_dir if self.distributed.is_chief else None):
            return self._run(call, resume)

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
            FrostlineTypeError: for `epochs` or `initial_epoch`, which the phases set.
            FrostlineValueError: for `resume=True` without a `checkpoint_dir`.
            NotCacheable: for a phase whose `cache="memory"` or `"disk"` cannot read the
                data (an infinite dataset, a generator without `steps_per_epoch`).
            FrostlineValueError: also for `cache_views` on arrays with no random layer
                in the model.
            DistributionError: with a `distribution` and array inputs, for a batch size
                (or a last batch) that the devices cannot split equally (with
                `validation_split`, in either part), arrays that Keras would try to
                split over several hosts, or, on TensorFlow, a model or optimizer made
                outside the strategy's scope.
        """
        check_run(self.distributed, self.model, self.optimizer, x, validation_data=validation_data,
                  batch_size=batch_size, resume=resume, checkpoint_dir=self.checkpoint_dir, fit_kwargs=fit_kwargs,
                  phases=self.phases)

    def _run(self, call: FitCall, resume: bool) -> keras.callbacks.History:
        compiled = _keras.compile_attributes(self.model)  # put back if the first phase stops
        try:
            point = self._start(call, resume)
        except BaseException:
            _keras.set_compile_attributes(self.model, compiled)
            raise
        call.user.on_train_begin()
        logs: dict = {}
        epoch = point.epoch
        for index in range(point.phase, len(self.phases)):
            # A resumed phase began before the checkpoint; a new one begins now.
            resumed = index == point.phase and point.phase_start is not None
            start = point.phase_start if resumed else epoch
            info, user_stopped = self._run_phase(index, call, compiled if index == point.phase else None,
                                                 start_epoch=start, epoch=epoch,
                                                 offset=point.schedule_offset if resumed else None)
            epoch = start + info.epochs_run
            logs = info.logs if info.logs is not None else logs
            if user_stopped:
                break  # a callback of the user's ended the run
        call.user.on_train_end(logs)
        return self._log.history(self.model)

    def _start(self, call: FitCall, resume: bool) -> ResumePoint:
        """Compiles, places the variables and starts the log; restores the last
        checkpoint when resuming."""
        shuffle = call.inputs.fit_kwargs.get("shuffle", True)
        self._log = RunLog(config=self.config(batch_size=call.inputs.batch_size, shuffle=shuffle),
                           shuffle_seed=0 if resume else run_shuffle_seed(self.seed))  # resumed: the checkpoint's
        compile_for_run(self.model, self.optimizer, dict(loss=self.loss, metrics=self.metrics, **self.compile_kwargs))
        self.distributed.place(self._state_variables(self.model))
        self._resume_random_state = None
        if not resume:
            return ResumePoint.fresh()
        point = restore(self.checkpoint_dir, config=self._log.config, model=self.model, optimizer=self.optimizer,
                        phases=self.phases, log=self._log, inputs=call.inputs)
        self.reports.update(point.reports)
        self._resume_random_state = point.random_state
        if call.phase_lines:
            print(f"resuming from {point.path} after epoch {point.epoch}", flush=True)
        return point

    def _run_phase(self, index: int, call: FitCall, compiled: dict | None, **position: Any) -> tuple[PhaseInfo, bool]:
        """`_phase` undone if it fails (see `frostline.train.faults`)."""
        undo = PhaseUndo(self.model, self.optimizer, compiled)
        try:
            return self._phase(index, call, **position)
        except BaseException as error:
            undo.restore()
            if (translated := phase_error(error, self.phases[index].name, self.checkpoint_dir)) is None:
                raise
            raise translated from error

    def _phase(self, index: int, call: FitCall, *, start_epoch: int, epoch: int,
               offset: int | None) -> tuple[PhaseInfo, bool]:
        """Runs one phase from `epoch`; returns its `PhaseInfo` and whether a callback
        of the user's ended the run."""
        phase = self.phases[index]
        report = self._enter(phase, offset)
        iterations = offset if offset is not None else _keras.iterations(self.optimizer)
        stopper = PhaseStop(**phase.early_stopping) if phase.early_stopping else None
        callbacks = self._phase_callbacks(index, phase, call.user, start_epoch, iterations, stopper)
        restore_random_state = keep_global_random_state()
        with self._cache.for_phase(self.model, call.inputs, mode=phase.cache, epochs=phase.epochs,
                                   dtype=phase.cache_dtype, what=f"Phase {phase.name!r}", views=phase.cache_views,
                                   first_epoch=start_epoch) as cached:
            fit_model = self._fit_model(cached)
            restore_random_state()  # computing the cache drew from them; plain fit would not have
            info = PhaseInfo(index, len(self.phases), report, start_epoch, cached.description, cached.nbytes,
                             cached.model is not None, call.phase_lines, epochs_run=(epoch - start_epoch) or None)
            self.on_phase_begin(phase, info)
            data = keyed_shuffle(cached.inputs, fit_model, seed=self._log.shuffle_seed, first_epoch=epoch)
            result = fit_model.fit(**data.arguments(), epochs=start_epoch + phase.epochs,
                                   initial_epoch=epoch, callbacks=[*cached.callbacks, *callbacks],
                                   verbose=call.verbose)
            if cached.model is not None:
                sync_model(self.model)  # the flags and optimizer order of the whole model again
        epochs_run = epoch + len(result.epoch) - start_epoch
        self._log.phase_done(phase.name, start_epoch, epochs_run)
        stopped_early = bool(stopper and stopper.triggered)
        logs = {k: v[-1] for k, v in result.history.items()} if result.history else None
        info = dataclasses.replace(info, epochs_run=epochs_run, logs=logs, stopped_early=stopped_early)
        self.on_phase_end(phase, info)
        return info, fit_model.stop_training and not stopped_early

    def _enter(self, phase: Phase, offset: int | None) -> Report:
        """Applies the phase's plan and sets its learning rate."""
        report = apply(self.model, phase.plan)
        self.reports[phase.name] = report
        self.distributed.place(self._state_variables(self.model))
        set_learning_rate(self.model, self.optimizer, phase.learning_rate, offset=offset, what=f"Phase {phase.name!r}")
        return report

    def _phase_callbacks(self, index: int, phase: Phase, user: keras.callbacks.CallbackList, start_epoch: int,
                         iterations: int, stopper: PhaseStop | None) -> list[keras.callbacks.Callback]:
        own = keras.callbacks.CallbackList(list(phase.callbacks), model=self.model)
        record = RecordEpochs(self._log, phase=index, phase_name=phase.name, phase_start_epoch=start_epoch,
                              phase_epochs=phase.epochs, phase_start_iterations=iterations, stopper=stopper,
                              write_checkpoint=self._checkpoint_writer())
        restore_random, self._resume_random_state = self._resume_random_state, None
        return (
            [Reseed(self.seed, restore=restore_random)]
            + [ForwardEvents(own, train_hooks=True), ForwardEvents(user)]
            + ([stopper] if stopper else [])
            + [record]
        )

    def _checkpoint_writer(self):
        """`write(name, state)` for this process, or None: no checkpoint directory, or
        another process writes them."""
        if self.checkpoint_dir is None or not self.distributed.is_chief:
            return None

        def write(name: str, state: dict[str, Any]) -> None:
            # self.model, not the model being fitted: a cached phase fits the remainder.
            write_checkpoint(self.checkpoint_dir, name, self.model, self.optimizer, state)

        return write

    def _fit_model(self, cached: CachedPhase) -> keras.Model:
        """The model the phase fits: the whole model, or the remainder, compiled with the
        same optimizer."""
        if cached.model is None:
            return self.model
        remainder = compile_remainder(cached.model, self.model, self.optimizer,
                                      dict(loss=self.loss, metrics=self.metrics, **self.compile_kwargs))
        self.distributed.place(self._state_variables(remainder))
        return remainder

    def _state_variables(self, model: keras.Model) -> list:
        return list(model.variables) + list(model.metrics_variables) + list(self.optimizer.variables)
