"""keras-hub models, tiny and built from their constructors (presets need a download).

These tests need `pip install -e ".[hub]"`; scripts/test.sh runs them in a virtual
environment that has it and sets FROSTLINE_REQUIRE_HUB=1, so that there a missing
keras-hub is a failure, not a skip.

Every test here is marked `hub_core` — the keras-hub core, which scripts/test.sh runs on
JAX, TensorFlow and PyTorch — except those in the files of `JAX_ONLY`, which run on JAX
alone: the examples of docs/keras-hub.md, run in fresh processes and compared with the
output the page shows (on JAX, as tests/test_docs.py does for the other pages).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
JAX_ONLY = {"test_hub_docs.py"}

sys.path.insert(0, str(HERE))  # hub_zoo

collect_ignore_glob: list[str] = []
if os.environ.get("FROSTLINE_REQUIRE_HUB") == "1":
    import keras_hub  # noqa: F401  (fails loudly where the tests must run)
elif importlib.util.find_spec("keras_hub") is None:
    # Not collected at all here (their modules import keras_hub); pytest's own skip in
    # a conftest would end a run pointed at this folder with a traceback.
    collect_ignore_glob = ["*.py"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(item.path).resolve()
        if path.parent == HERE and path.name not in JAX_ONLY:
            item.add_marker(pytest.mark.hub_core)
