"""The demo, reduced (`--quick`), in a real process; the full size runs in benchmarks/demo.py."""

import re

import pytest

from parity.helpers import run_frostline

pytestmark = pytest.mark.slow  # the demo in fresh processes


def run_demo(out, seed):
    return run_frostline("demo", "--quick", "--out", out, "--seed", seed)


def test_quick_demo_writes_report_and_plots_and_is_repeatable(tmp_path):
    first = run_demo(tmp_path / "a", 3)
    assert first.returncode == 0, first.stderr
    last = first.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"accuracy: scratch=(\d\.\d{3}) frozen=(\d\.\d{3}) finetuned=(\d\.\d{3})", last)
    assert m, last
    assert all(0.0 <= float(v) <= 1.0 for v in m.groups())
    assert float(m.group(3)) > 0.3  # fine-tuned beats chance (5 classes) even when quick
    assert "phase 1/2 'head'" in first.stdout and "phase 2/2 'top block'" in first.stdout
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["frostline.png", "history.png", "model.keras", "report.md"]
    assert "| fine-tuned (top block unfrozen) |" in (tmp_path / "a" / "report.md").read_text()
    again = run_demo(tmp_path / "b", 3)
    assert again.stdout.strip().splitlines()[-1] == last


def test_too_many_labels_per_class_is_refused():
    result = run_frostline("demo", "--labels-per-class", "500")
    assert result.returncode == 2
    assert "Expected labels_per_class between 1 and" in result.stderr
