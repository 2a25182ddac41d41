"""The progress line of `frostline train`: where the run is (phase, epoch of the run), the
latest metrics and an estimate of the time left.

    phase 2/2 'top' · epoch 4/5 · loss 1.162 · accuracy 0.3281 · val_loss 1.106 · 0.2s · ETA 0:01

Written to a file or pipe (a log), it is one plain line per epoch: no carriage returns,
no terminal codes. On a terminal the line is also redrawn after every batch.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import keras

__all__ = ["RunProgress", "TerminalProgress", "duration", "progress_callbacks"]


def duration(seconds: float) -> str:
    """`seconds` as `m:ss`, or `h:mm:ss` from an hour on.

    Example:

    >>> duration(42), duration(61.6), duration(3725)
    ('0:42', '1:02', '1:02:05')
    """
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _metrics(logs: dict[str, Any] | None) -> list[str]:
    return [f"{k} {float(v):.4g}" for k, v in (logs or {}).items() if k != "learning_rate"]


class RunProgress(keras.callbacks.Callback):
    """One line per epoch of a `FineTune` run: the phase (number, count and name), the
    epoch of the run (counted from 1, out of the epochs the run has when no phase stops
    early), the epoch's logs, its time and the time left. For `FineTune.fit(callbacks=...)`,
    with `verbose=0`.

    Args:
        run: The `FineTune` whose `fit` this watches; the phase is the one whose report
            (`run.reports`) was taken last.
        stream: Where to write. Defaults to None: `sys.stdout` as each line is written.
    """

    def __init__(self, run: Any, *, stream: TextIO | None = None):
        super().__init__()
        self.run = run
        self._stream = stream
        self._seen: dict[str, int] = {}
        self._phase = 0
        self._total = sum(p.epochs for p in run.phases)
        self._phase_seconds: list[float] = []
        self._epoch_began = 0.0

    @property
    def stream(self) -> TextIO:
        """Where the lines go."""
        return self._stream if self._stream is not None else sys.stdout

    def on_train_begin(self, logs=None):
        self._seen = {name: id(r) for name, r in self.run.reports.items()}  # a resumed run's earlier phases

    def on_epoch_begin(self, epoch, logs=None):
        begun = [name for name, r in self.run.reports.items() if self._seen.get(name) != id(r)]
        if begun:
            resumed_inside = begun[-1] in self._seen
            self._seen = {name: id(r) for name, r in self.run.reports.items()}
            self._phase = [p.name for p in self.run.phases].index(begun[-1])
            self._phase_seconds = []
            # Phases run their epochs unless they stop early; a phase resumed part way began before.
            phases = self.run.phases
            start = min(epoch, sum(p.epochs for p in phases[: self._phase])) if resumed_inside else epoch
            self._total = start + sum(p.epochs for p in phases[self._phase:])
        self._epoch = epoch
        self._epoch_began = time.perf_counter()

    def _head(self) -> str:
        phase = self.run.phases[self._phase]
        return (f"phase {self._phase + 1}/{len(self.run.phases)} '{phase.name}' · "
                f"epoch {self._epoch + 1}/{max(self._total, self._epoch + 1)}")

    def _seconds_left(self, this_epoch_left: float | None) -> float | None:
        if not self._phase_seconds:
            return this_epoch_left
        # A phase's first epoch also compiles: leave it out once there are others.
        timed = self._phase_seconds[1:] or self._phase_seconds
        per_epoch = sum(timed) / len(timed)
        later = max(0, self._total - self._epoch - 1) * per_epoch
        return later + (this_epoch_left if this_epoch_left is not None else 0.0)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_began
        self._phase_seconds.append(seconds)
        left = self._seconds_left(0.0)
        parts = [self._head(), *_metrics(logs), f"{seconds:.1f}s"]
        if left is not None:
            parts.append(f"ETA {duration(left)}")
        self._write(" · ".join(parts))


class TerminalProgress(RunProgress):
    """`RunProgress` for a terminal: the line of the epoch under way is redrawn after
    every batch (at most ten times a second), and stays when the epoch ends.

    Args:
        run, stream: As for `RunProgress`.
    """

    def __init__(self, run: Any, *, stream: TextIO | None = None):
        super().__init__(run, stream=stream)
        self._drawn = 0
        self._last_draw = 0.0
        self._batches: int | None = None  # an epoch's batches, once one epoch of the phase ran
        self._count = 0  # batches of the epoch under way

    def on_epoch_begin(self, epoch, logs=None):
        phase = self._phase
        super().on_epoch_begin(epoch, logs)
        if phase != self._phase:
            self._batches = None

    def on_train_batch_end(self, batch, logs=None):
        self._count = batch + 1
        now = time.perf_counter()
        if now - self._last_draw < 0.1:
            return
        self._last_draw = now
        done = batch + 1
        elapsed = now - self._epoch_began
        counted = f"batch {done}/{self._batches}" if self._batches else f"batch {done}"
        this_left = elapsed / done * (self._batches - done) if self._batches and done <= self._batches else None
        left = self._seconds_left(this_left)
        parts = [self._head(), counted, *_metrics(logs)]
        if left is not None and (this_left is not None or self._phase_seconds):
            parts.append(f"ETA {duration(left)}")
        self._draw(" · ".join(parts))

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._drawn))
        self.stream.flush()
        self._drawn = len(text)

    def on_epoch_end(self, epoch, logs=None):
        if self._count:
            self._batches = self._count
        self._count = 0
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0
        super().on_epoch_end(epoch, logs)


def progress_callbacks(run: Any, verbose: str | int, *, stream: TextIO | None = None) -> list[RunProgress]:
    """The progress callbacks for `frostline train`: none when `verbose` is 0, a
    `TerminalProgress` when the output is a terminal, else a `RunProgress`.

    Args:
        run: The `FineTune`.
        verbose: The command's verbosity: 0 (`--quiet`) or "auto".
        stream: Where to write. Defaults to None: `sys.stdout`.
    """
    if verbose == 0:
        return []
    out = stream if stream is not None else sys.stdout
    is_terminal = bool(getattr(out, "isatty", None) and out.isatty())
    return [(TerminalProgress if is_terminal else RunProgress)(run, stream=stream)]

