"""`RunLog`: what a run has done so far — every epoch's logs and the phases run — in the
form a checkpoint stores and the run's `History` shows."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras

__all__ = ["RunLog"]


@dataclasses.dataclass
class RunLog:
    """The record of one `FineTune.fit`.

    Attributes:
        config: The run's configuration, as plain data (what a checkpoint must agree
            with to be resumed).
        records: `[epoch, logs]` for every epoch run, in order.
        phases_run: `{"name", "start_epoch", "epochs"}` for every phase finished.
        shuffle_seed: What the order of shuffled arrays is keyed by on TensorFlow
            (`frostline.train.shuffling.run_shuffle_seed`).
    """

    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    records: list[list] = dataclasses.field(default_factory=list)
    phases_run: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    shuffle_seed: int = 0

    def record(self, epoch: int, logs: dict[str, Any] | None) -> None:
        """Keeps one epoch's logs, as floats."""
        self.records.append([epoch, {k: float(v) for k, v in (logs or {}).items()}])

    def phase_done(self, name: str, start_epoch: int, epochs: int) -> None:
        """Notes a phase as run: where it began and how many epochs it ran."""
        self.phases_run.append({"name": name, "start_epoch": start_epoch, "epochs": epochs})

    def checkpoint_state(self, *, epoch_done: int, phase: int, phase_name: str, phase_start_epoch: int,
                         phase_start_iterations: int, phase_finished: bool) -> dict[str, Any]:
        """The `state.json` of a checkpoint written after epoch `epoch_done - 1`, inside
        phase number `phase` (counted from 0)."""
        current = {"name": phase_name, "start_epoch": phase_start_epoch, "epochs": epoch_done - phase_start_epoch}
        return {
            "epoch_done": epoch_done,
            "phase": phase,
            "phase_start_epoch": phase_start_epoch,
            "phase_start_iterations": phase_start_iterations,
            "phase_finished": phase_finished,
            "history": self.records,
            "phases_run": self.phases_run + [current],
            "config": self.config,
            "shuffle_seed": self.shuffle_seed,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Takes the records and phases of a checkpoint's state; a phase the checkpoint
        was written inside is left out (it goes on)."""
        self.records = [list(r) for r in state["history"]]
        self.phases_run = [dict(p) for p in state["phases_run"]]
        self.shuffle_seed = state.get("shuffle_seed", self.shuffle_seed)
        if not state["phase_finished"]:
            self.phases_run.pop()

    def history(self, model: keras.Model) -> keras.callbacks.History:
        """One History over every epoch recorded; `history.phases` lists the phases run.
        A metric missing from some epochs is NaN there."""
        history = keras.callbacks.History()
        history.set_model(model)
        history.epoch = [int(e) for e, _ in self.records]
        keys: list[str] = []
        for _, logs in self.records:
            keys.extend(k for k in logs if k not in keys)
        history.history = {k: [logs.get(k, math.nan) for _, logs in self.records] for k in keys}
        history.phases = [dict(p) for p in self.phases_run]
        return history
