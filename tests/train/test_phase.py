"""`fl.Phase`: its arguments are checked when it is built."""

import pytest

import frostline as fl


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "", "epochs": 1}, "non-empty string"),
        ({"name": "a", "epochs": 0}, "positive integer. Received: epochs=0"),
        ({"name": "a", "epochs": 1, "learning_rate": -1}, "positive number"),
        ({"name": "a", "epochs": 1, "plan": {"rules": []}}, "frostline Plan"),
        ({"name": "a", "epochs": 1, "early_stopping": {"patiense": 2}}, "patiense"),
    ],
)
def test_phase_refuses_bad_arguments_naming_them(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fl.Phase(**kwargs)


def test_phase_takes_only_its_name_positionally():
    with pytest.raises(fl.FrostlineTypeError, match=r"Phase\('top', epochs=5"):
        fl.Phase("top", 5, fl.Plan())
    assert fl.Phase("top", epochs=5).epochs == 5
