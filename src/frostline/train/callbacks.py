"""The callbacks `FineTune` puts around each phase's `fit`.

Each takes the values it needs, never the runner: a phase's early stopping, the
forwarding of events to the user's callbacks, reseeding from (seed, epoch), and the
per-epoch record that also writes the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from frostline import _keras
from frostline.train.log import RunLog
from frostline.train.randomness import capture_random_state, restore_random_state

__all__ = ["ForwardEvents", "PhaseStop", "RecordEpochs", "Reseed"]


class PhaseStop(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that ends one phase, not the run: `triggered`
    tells the runner that the phase, not a callback of the user's, stopped training.

    Args:
        **kwargs: The arguments of `keras.callbacks.EarlyStopping`.
    """

    triggered = False

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.model.stop_training:
            self.triggered = True


class ForwardEvents(keras.callbacks.Callback):
    """Gives the user's callbacks one training run across all phases: epoch and batch
    events are passed on; train begin and end are sent once, by the runner.

    Batch-level events are forwarded only when one of the user's callbacks handles them:
    Keras dispatches asynchronously, and so faster, when no callback does.

    Args:
        callbacks: The user's callbacks, as a `CallbackList` set to the user's model.
        train_hooks: Forward `on_train_begin` / `on_train_end` too (a phase's own
            callbacks see each phase as a run). Defaults to False.
    """

    _EPOCH_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_test_begin", "on_test_end")
    _BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end")

    def __init__(self, callbacks: keras.callbacks.CallbackList, *, train_hooks: bool = False):
        super().__init__()
        self.callbacks = callbacks
        users = list(callbacks.callbacks)
        if train_hooks:
            self.on_train_begin = callbacks.on_train_begin
            self.on_train_end = callbacks.on_train_end
        for name in self._EPOCH_HOOKS + self._BATCH_HOOKS:
            if name in self._EPOCH_HOOKS or any(_keras.overrides_hook(c, name) for c in users):
                setattr(self, name, getattr(callbacks, name))
        forward_epoch_end = self.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            forward_epoch_end(epoch, logs)
            # The callbacks watch the user's model; a cached phase fits the remainder.
            if callbacks.model is not None and callbacks.model.stop_training and self.model is not None:
                self.model.stop_training = True

        self.on_epoch_end = on_epoch_end


class Reseed(keras.callbacks.Callback):
    """Sets the global random generators as each epoch begins: first, in a run resumed
    inside a phase, as the checkpoint found them when its epoch ended (what `fit` drew
    while it started is overwritten, as the uninterrupted run drew nothing there); then,
    with a seed, from (seed, epoch). Either way a resumed run draws the shuffling and
    dropout the uninterrupted one drew.

    Args:
        seed: The run's seed, or None: no reseeding.
        restore: A `capture_random_state()` from the checkpoint, put back as the first
            epoch begins. Defaults to None.
    """

    def __init__(self, seed: int | None, *, restore: dict[str, Any] | None = None):
        super().__init__()
        self.seed = seed
        self.restore = restore

    def on_epoch_begin(self, epoch, logs=None):
        if self.restore is not None:
            restore_random_state(self.restore)
            self.restore = None
        if self.seed is None:
            return
        derived = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0] % (2**31 - 1))
        keras.utils.set_random_seed(derived)


class RecordEpochs(keras.callbacks.Callback):
    """Keeps every epoch's logs in a `RunLog` and, given a writer, writes a checkpoint
    with the global random states the next epoch draws from (`capture_random_state`).

    Args:
        log: The run's `RunLog`.
        phase: The phase's number, from 0.
        phase_name: Its name.
        phase_start_epoch: The epoch it began with.
        phase_epochs: Its `epochs`.
        phase_start_iterations: The optimizer's `iterations` when it began.
        stopper: Its `PhaseStop`, or None.
        write_checkpoint: Called as `write_checkpoint(name, state)` after every epoch
            (`name` like "epoch-00003", `state` the checkpoint's `state.json`), or None:
            no checkpoints.
    """

    def __init__(self, log: RunLog, *, phase: int, phase_name: str, phase_start_epoch: int, phase_epochs: int,
                 phase_start_iterations: int, stopper: PhaseStop | None,
                 write_checkpoint: Callable[[str, dict[str, Any]], Any] | None):
        super().__init__()
        self.log = log
        self.phase = phase
        self.phase_name = phase_name
        self.phase_start_epoch = phase_start_epoch
        self.phase_epochs = phase_epochs
        self.phase_start_iterations = phase_start_iterations
        self.stopper = stopper
        self.write_checkpoint = write_checkpoint

    def on_epoch_end(self, epoch, logs=None):
        self.log.record(epoch, logs)
        if self.write_checkpoint is None:
            return
        stopped = bool(self.stopper and self.stopper.triggered)
        state = self.log.checkpoint_state(
            epoch_done=epoch + 1, phase=self.phase, phase_name=self.phase_name,
            phase_start_epoch=self.phase_start_epoch, phase_start_iterations=self.phase_start_iterations,
            phase_finished=stopped or epoch + 1 >= self.phase_start_epoch + self.phase_epochs,
        )
        state["random_state"] = capture_random_state()
        self.write_checkpoint(f"epoch-{epoch + 1:05d}", state)
