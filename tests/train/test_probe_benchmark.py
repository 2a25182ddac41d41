"""benchmarks/probe.py --quick in a real process: its machine-readable line, and every
cut costing at most 2.5 times one cut (one pass of the data either way)."""

import os
import re
import subprocess
import sys

import pytest

from parity.helpers import ROOT

pytestmark = pytest.mark.slow  # a benchmark in a fresh process

LINE = re.compile(r"probe_all=(\d+\.\d{3}) probe_one=(\d+\.\d{3}) schedule=(\d+\.\d{3}) cuts=(\d+) "
                  r"all_over_one=(\d+\.\d\d) all_over_schedule=(\d+\.\d\d)")


def test_quick_probe_benchmark_prints_its_line_and_every_cut_costs_at_most_two_and_a_half_one_cut():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe.py"), "--quick"], cwd=ROOT,
                            env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    match = LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    every, one, schedule, cuts, ratio, against = (float(v) for v in match.groups())
    # The quick model has five cuts (the stem and its blocks; the last one is the pooling after them).
    assert cuts == 5
    assert "probe, one cut (pool)" in result.stdout
    assert every > 0 and one > 0 and schedule > 0
    assert abs(ratio - every / one) < 0.01 and abs(against - every / schedule) < 0.01
    assert ratio <= 2.5, result.stdout
