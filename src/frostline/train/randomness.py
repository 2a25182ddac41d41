"""The process's global random generators: kept across work that draws from them, and
captured into a checkpoint and put back on resume, so that a resumed run draws what the
uninterrupted run drew (docs/checkpoints.md, "Exact resume")."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = ["capture_random_state", "check_random_state", "keep_global_random_state", "restore_random_state"]


def keep_global_random_state() -> Callable[[], None]:
    """A function that puts the process's global random generators (Python's, NumPy's
    and, on the torch backend, torch's) back as they are now.

    Computing a phase's cache runs `predict` before the phase's `fit`. On torch every pass
    of a DataLoader takes a seed from torch's global generator, and Keras draws from that
    same generator the masks of a Dropout made without a seed and the order of a shuffled
    fit on arrays. Put back before the `fit`, a cached phase draws the masks and the
    order that plain `fit` draws.
    """
    states: list[Any] = [random.getstate(), np.random.get_state()]
    if keras.backend.backend() == "torch":
        import torch

        states.append(torch.random.get_rng_state())
        states.append(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def restore() -> None:
        random.setstate(states[0])
        np.random.set_state(states[1])
        if len(states) > 2:
            import torch

            torch.random.set_rng_state(states[2])
            if states[3] is not None:
                torch.cuda.set_rng_state_all(states[3])

    return restore


# ---- in a checkpoint -----------------------------------------------------------------------


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def capture_random_state() -> dict[str, Any]:
    """What the next epoch's shuffling and random layers draw from, beyond the model's
    own variables, as plain JSON data: Python's `random`, NumPy's global generator and,
    on the torch backend, torch's CPU and CUDA generators.

    A layer's own `SeedGenerator` (Dropout, RandomFlip, ...) keeps its state in a model
    variable, which the checkpoint's `model.npz` holds. Keras's global `SeedGenerator`,
    which only `keras.random` calls without a seed draw from, is not captured.

    Returns:
        `{"python": [...], "numpy": [...], "torch": {...}}` (`torch` only on the torch
        backend).
    """
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }
    if keras.backend.backend() == "torch":
        import torch

        state["torch"] = {
            "cpu": _encode(torch.random.get_rng_state().numpy().tobytes()),
            "cuda": [_encode(s.numpy().tobytes()) for s in torch.cuda.get_rng_state_all()]
            if torch.cuda.is_available() else [],
        }
    return state


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value.encode("ascii"), validate=True)
    except ValueError:
        return False
    return True


def check_random_state(state: Any) -> str | None:
    """What is wrong with a `capture_random_state()` read back from a checkpoint, or
    None when it can be restored: every field with its type and length, so that
    restoring cannot fail halfway.

    Args:
        state: The value read back.

    Returns:
        A description of the first field that is wrong, or None.
    """
    if not isinstance(state, dict):
        return "an object"
    python, numpy_state = state.get("python"), state.get("numpy")
    if not (isinstance(python, list) and len(python) == 3 and _is_int(python[0]) and isinstance(python[1], list)
            and len(python[1]) == 625 and all(_is_int(v) and 0 <= v < 2**32 for v in python[1])
            and (python[2] is None or type(python[2]) is float)):
        return "python: [version, [625 integers], gauss or null], as random.getstate() gives"
    if not (isinstance(numpy_state, list) and len(numpy_state) == 5 and numpy_state[0] == "MT19937"
            and isinstance(numpy_state[1], list) and len(numpy_state[1]) == 624
            and all(_is_int(v) and 0 <= v < 2**32 for v in numpy_state[1]) and _is_int(numpy_state[2])
            and 0 <= numpy_state[2] <= 624 and numpy_state[3] in (0, 1) and type(numpy_state[4]) is float):
        return "numpy: ['MT19937', [624 integers], position, has_gauss, cached_gaussian], as np.random.get_state()"
    if keras.backend.backend() == "torch":
        torch_state = state.get("torch")
        if not (isinstance(torch_state, dict) and _is_text(torch_state.get("cpu"))
                and isinstance(torch_state.get("cuda"), list) and all(map(_is_text, torch_state["cuda"]))):
            return "torch: {'cpu': base64 text, 'cuda': [base64 text, ...]}, torch's generator states"
    return None


def restore_random_state(state: dict[str, Any]) -> None:
    """Puts back what `capture_random_state` captured (checked by `check_random_state`).

    Torch's generators are put back when the state has them and the backend is torch;
    CUDA's only on as many devices as both have.

    Args:
        state: A `capture_random_state()` result, read back from a checkpoint.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    if keras.backend.backend() == "torch" and "torch" in state:
        import torch

        torch.random.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch"]["cpu"]),
                                                                 dtype=np.uint8).copy()))
        if torch.cuda.is_available():
            cuda = [torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())
                    for s in state["torch"]["cuda"]]
            for device, saved in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(saved, device)


def inexact_inputs(inputs: Any) -> str | None:
    """Why a resumed run on these inputs cannot draw the order the uninterrupted run
    drew, or None when it can: what draws it is not in the checkpoint.

    Args:
        inputs: The run's `FitInputs`.

    Returns:
        One sentence, or None.
    """
    from frostline.train.shuffling import keyed_shuffle_applies

    # A tf.data.Dataset that shuffles is not named: nothing public tells whether one does.
    x, shuffle = inputs.x, inputs.fit_kwargs.get("shuffle", True)
    if hasattr(x, "__next__") and not hasattr(x, "__getitem__"):
        return "it reads a generator or iterator, whose position is not in the checkpoint"
    if (type(x).__module__ or "").startswith("tensorflow") and hasattr(x, "element_spec"):
        return None
    arrays = isinstance(x, (np.ndarray, list, tuple, dict)) or hasattr(x, "__array__")
    if arrays and shuffle and keras.backend.backend() == "tensorflow" and not keyed_shuffle_applies(inputs):
        return ("on the TensorFlow backend Keras shuffles these arrays (shuffle='batch', or with steps_per_epoch) "
                "with tf.random.shuffle inside a tf.data pipeline built by each phase's fit, whose state is not in "
                "the checkpoint (pass shuffle=True without steps_per_epoch, or shuffle=False)")
    return None
