"""Choose a Keras backend before Keras is imported.

frostline installs JAX, not TensorFlow, while Keras falls back to TensorFlow when nothing
is configured. Without this, `import frostline` on a fresh install would fail inside Keras.

The `frostline` command (the script, or `python -m frostline`) imports Keras only when a
command needs it, so that `--help` and `--version` start at once and a backend that cannot
start is the command's one-line error rather than a traceback from `import frostline`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

from frostline.errors import BackendUnavailable, did_you_mean

_BACKEND_MODULES = {
    "jax": "jax",
    "tensorflow": "tensorflow",
    "torch": "torch",
    "numpy": "numpy",
    "openvino": "openvino",
}

_keras_wanted = False


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
        BackendUnavailable: (an `ImportError`) if `KERAS_BACKEND` names a backend that is
            not installed, or no Keras backend at all, before Keras fails on it less clearly.

    `KERAS_BACKEND`, an already imported Keras, and a `keras.json` naming an installed
    backend are all respected; only when none applies does frostline pick JAX.
    """
    if "keras" in sys.modules:
        return
    requested = os.environ.get("KERAS_BACKEND")
    if requested:
        module = _BACKEND_MODULES.get(requested)
        if module is None:
            raise BackendUnavailable(
                f"KERAS_BACKEND={requested!r} is not a Keras backend: expected one of "
                f"{', '.join(_BACKEND_MODULES)}.{did_you_mean(requested, _BACKEND_MODULES)} "
                "Or unset KERAS_BACKEND to use JAX."
            )
        if importlib.util.find_spec(module) is None:
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


def import_keras() -> None:
    """Chooses the backend (`choose_default_backend`) and imports Keras, for a command
    that needs it; from here on `import frostline` imports its public names at once.

    Raises:
        BackendUnavailable: as `choose_default_backend` does, and when Keras or its
            backend fails to import (a broken install), with the first line of the reason.
    """
    global _keras_wanted
    _keras_wanted = True
    choose_default_backend()
    try:
        import keras  # noqa: F401
    except Exception as e:  # whatever a broken backend raises: one line, the cause kept
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        backend = os.environ.get("KERAS_BACKEND", "the configured backend")
        raise BackendUnavailable(f"Keras could not start with backend {backend!r}: {reason}") from e


def defers_keras() -> bool:
    """Whether `import frostline` should leave Keras unimported: true in the `frostline`
    command until `import_keras` is called, false for every other program."""
    return not _keras_wanted and _running_the_command()


def _running_the_command() -> bool:
    if sys.argv[:1] == ["-m"]:
        # `python -m NAME`: while NAME's package is imported, argv[0] is "-m".
        argv = sys.orig_argv
        return any(a == "-m" and b in ("frostline", "frostline.__main__") for a, b in zip(argv, argv[1:]))
    # The installed script runs `from frostline.app.cli import main` as __main__.
    script = re.sub(r"(-script\.pyw?|\.exe)?$", "", os.path.basename(sys.argv[0] if sys.argv else ""))
    main_file = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return script == "frostline" and os.path.basename(main_file).startswith("frostline")
