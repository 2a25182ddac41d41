"""docs/keras-hub.md's examples run with keras-hub installed and print what the page shows.

tests/test_docs.py runs every docs page in the main environment, which has no keras-hub,
and skips this one there (the page says `<!-- needs: keras_hub -->`); this test runs it
with the same machinery where keras-hub is installed.
"""

import pytest

from parity.helpers import ROOT
from test_docs import missing_modules, needed_modules, run_page_examples

PAGE = "keras-hub.md"


def test_the_page_says_it_needs_keras_hub_which_is_installed_here():
    text = (ROOT / "docs" / PAGE).read_text()
    assert needed_modules(text) == ["keras_hub"]
    assert missing_modules(text) == []


@pytest.mark.slow
def test_keras_hub_page_examples_run_and_print_what_the_page_shows(tmp_path):
    run_page_examples(PAGE, tmp_path)
