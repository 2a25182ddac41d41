import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import pytest  # noqa: E402

from model_zoo import MODEL_BUILDERS  # noqa: E402

# Scripts that tests run as separate processes; importing them would set up devices.
collect_ignore = ["scripts"]


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.backend.clear_session()
    keras.utils.set_random_seed(1)
    yield


@pytest.fixture(params=sorted(MODEL_BUILDERS))
def any_model(request):
    """Each model shape LayerTree must handle."""
    return MODEL_BUILDERS[request.param]()
