"""keras-hub models, tiny and built from their constructors (presets need a download).

These tests need `pip install -e ".[hub]"`; scripts/test.sh runs them in a virtual
environment that has it and sets FROSTLINE_REQUIRE_HUB=1, so that there a missing
keras-hub is a failure, not a skip.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # hub_zoo

if os.environ.get("FROSTLINE_REQUIRE_HUB") == "1":
    import keras_hub  # noqa: F401  (fails loudly where the tests must run)
else:
    pytest.importorskip("keras_hub")
