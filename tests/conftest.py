import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
# pytest imports the test files with --import-mode=importlib (pyproject.toml), so that
# same-named files in different folders do not collide; that mode puts nothing on
# sys.path, so the shared modules here (model_zoo, parity.helpers) are put there.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import pytest  # noqa: E402

from model_zoo import MODEL_BUILDERS  # noqa: E402

# Scripts that tests run as separate processes; importing them would set up devices.
collect_ignore = ["scripts"]


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    # Fresh layer names and seeds. Without free_memory=False Keras runs gc.collect() here,
    # about 0.3 s before every test; Python's own collector still runs as usual.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1)
    yield


@pytest.fixture(
    params=[pytest.param(n, marks=pytest.mark.slow) if n == "applications" else n for n in sorted(MODEL_BUILDERS)]
)
def any_model(request):
    """Each model shape LayerTree must handle."""
    return MODEL_BUILDERS[request.param]()
