"""A phase that fails part way: the model put back as it was before the phase, and the
error said plainly.

Whatever stops a phase (a full disk while its cache or a checkpoint is written, an
exception in a callback, Ctrl-C), its plan is undone: every `trainable` flag, inference
mode and learning-rate multiplier, the learning rate, the optimizer's variable set and
the traced functions are as they were before the phase, LoRA adapters the phase added
are taken out, and the plan it recorded on the model is forgotten. The weights and the
optimizer's slot values stay where the last step left them; the phase's cache files are
removed; the last checkpoint, written after the last completed epoch, is untouched.
When the first phase a `fit` runs stops, the model is also compiled again as it was
before that `fit` (with its own optimizer, or not at all).
"""

from __future__ import annotations

import errno
import os

import keras
import numpy as np

from frostline import _keras, _state
from frostline.apply.adapters import remove_adapters
from frostline.apply.apply import FlagSnapshot
from frostline.apply.sync import CompiledState
from frostline.errors import FrostlineError, StorageError
from frostline.model.adapters import lora_rank
from frostline.model.tree import LayerTree

__all__ = ["PhaseUndo", "phase_error"]


class PhaseUndo:
    """What a phase may change on the model, taken before it begins, to put back if it
    fails.

    Args:
        model: The model the run trains.
        optimizer: The run's optimizer.
        compiled: For the first phase a `fit` runs, the model's compile attributes
            before `fit` compiled it (`_keras.compile_attributes`), to put back too.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, compiled: dict | None = None):
        tree = LayerTree(model)
        self._model, self._optimizer = model, optimizer
        self._flags = FlagSnapshot(tree)
        self._compiled = CompiledState(model)
        self._adapted = {id(node.layer) for node in tree if lora_rank(node.layer)}
        record = _state.peek(model, _state.ModelState)
        self._plan = None if record is None else record.plan
        self._rate = _keras.learning_rate_value(optimizer)
        self._rate_value = np.array(self._rate.numpy()) if isinstance(self._rate, keras.Variable) else None
        self._compiled_before_run = compiled

    def restore(self) -> None:
        """Puts all of it back."""
        added = [n.layer for n in LayerTree(self._model) if lora_rank(n.layer) and id(n.layer) not in self._adapted]
        remove_adapters(added)
        self._flags.restore()
        self._compiled.restore()
        record = _state.peek(self._model, _state.ModelState)
        if record is not None:
            record.plan = self._plan
        _keras.set_learning_rate_value(self._optimizer, self._rate)
        if self._rate_value is not None:
            self._rate.assign(self._rate_value)
        if self._compiled_before_run is not None:
            _keras.set_compile_attributes(self._model, self._compiled_before_run)


def phase_error(error: BaseException, phase_name: str, checkpoint_dir: str | None) -> BaseException | None:
    """The error to raise for `error`, which stopped phase `phase_name` (already undone):
    a `StorageError` for an operating-system error such as a full disk; otherwise None,
    and `error` gets a note saying what state the model is in."""
    state = (f"frostline: phase {phase_name!r} was stopped and undone: the model's flags, modes, learning "
             "rate and optimizer are as before the phase; the weights are where the last step left them.")
    if checkpoint_dir is not None:
        state += f" The last checkpoint in {checkpoint_dir} is intact: fit(..., resume=True) continues from it."
    if isinstance(error, OSError) and not isinstance(error, FrostlineError):
        where = f" ({error.filename})" if error.filename else ""
        full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        advice = ("Free some space or give cache_dir= / checkpoint_dir= on another disk." if full
                  else "Give cache_dir= / checkpoint_dir= a folder this process can write to.")
        return StorageError(
            error.errno,
            f"Phase {phase_name!r} could not write{where}: {os.strerror(error.errno) if error.errno else error}. "
            f"Its partial files were removed. {state.removeprefix('frostline: ')} {advice}",
        )
    error.add_note(state)
    return None
