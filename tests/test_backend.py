"""How frostline picks the Keras backend when it is imported, in fresh processes."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test starts fresh processes


def test_import_picks_jax_when_no_backend_is_configured(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)  # no keras.json: nothing configured
    code = "import frostline, keras; print(keras.backend.backend())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.strip() == "jax", result.stderr
    env["KERAS_BACKEND"] = "numpy"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.strip() == "numpy", result.stderr


def test_backend_that_is_not_installed_is_named(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "openvino"}
    # Still an ImportError, for code that catches one; a frostline type, for code that
    # catches those.
    code = "try:\n    import frostline\nexcept ImportError as e:\n    print(type(e).__name__, e)\n    raise SystemExit(3)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "BackendUnavailable KERAS_BACKEND='openvino' but openvino is not installed" in result.stdout
