"""Choose a Keras backend before Keras is imported.

frostline installs JAX, not TensorFlow, while Keras falls back to TensorFlow when nothing
is configured. Without this, `import frostline` on a fresh install would fail inside Keras.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from frostline.errors import BackendUnavailable

_BACKEND_MODULES = {
    "jax": "jax",
    "tensorflow": "tensorflow",
    "torch": "torch",
    "numpy": "numpy",
    "openvino": "openvino",
}


def _configured_backend() -> str:
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    try:
        with open(os.path.join(keras_home, "keras.json")) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def choose_default_backend() -> None:
    """Sets `KERAS_BACKEND=jax` when nothing usable is configured.

    Raises:
        BackendUnavailable: (an `ImportError`) if `KERAS_BACKEND` names a backend that is not installed, before
            Keras fails on it less clearly.

    `KERAS_BACKEND`, an already imported Keras, and a `keras.json` naming an installed
    backend are all respected; only when none applies does frostline pick JAX.
    """
    if "keras" in sys.modules:
        return
    requested = os.environ.get("KERAS_BACKEND")
    if requested:
        module = _BACKEND_MODULES.get(requested)
        if module is not None and importlib.util.find_spec(module) is None:
            hints = {
                "tensorflow": "pip install 'frostline[tensorflow]'",
                "torch": "pip install 'frostline[torch]'",
                "jax": "pip install jax jaxlib",
            }
            hint = hints.get(requested, f"pip install {module}")
            fallback = "" if requested == "jax" else ", or unset KERAS_BACKEND to use JAX"
            raise BackendUnavailable(
                f"KERAS_BACKEND={requested!r} but {module} is not installed. "
                f"Install it ({hint}){fallback}."
            )
        return
    module = _BACKEND_MODULES.get(_configured_backend())
    if module is not None and importlib.util.find_spec(module) is not None:
        return
    os.environ["KERAS_BACKEND"] = "jax"
