"""The demo, reduced (`--quick`), in a real process; the full size runs in benchmarks/demo.py."""

import re

import pytest

from frostline.app.demo import run_demo
from parity.helpers import run_frostline

pytestmark = pytest.mark.slow  # the demo in fresh processes

SUMMARY = re.compile(r"accuracy: scratch=(\d\.\d{3}) frozen=(\d\.\d{3}) finetuned=(\d\.\d{3}) "
                     r"scratch_moving_bn=(\d\.\d{3}) \(mean of (\d+) seeds\)")
SEED_LINE = re.compile(r"seed (\d+): scratch=(\d\.\d{3}) scratch_moving_bn=(\d\.\d{3}) "
                       r"frozen=(\d\.\d{3}) finetuned=(\d\.\d{3})")


def test_quick_demo_prints_means_over_seeds_writes_files_and_each_seed_repeats_alone(tmp_path):
    first = run_frostline("demo", "--quick", "--out", tmp_path / "a", "--seed", 3)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    m = SUMMARY.fullmatch(lines[-1])
    assert m, lines[-1]
    scratch, frozen, finetuned, moving_bn = (float(v) for v in m.groups()[:4])
    assert m.group(5) == "4"
    seeds = {int(s.group(1)): [float(v) for v in s.groups()[1:]] for s in map(SEED_LINE.fullmatch, lines) if s}
    assert sorted(seeds) == [3, 4, 5, 6]
    for column, mean in enumerate((scratch, moving_bn, frozen, finetuned)):
        assert abs(sum(v[column] for v in seeds.values()) / 4 - mean) < 6e-4
    # The ordering docs/demo.md states: fine-tuning beats the frozen base, and the network
    # trained from scratch, its BN statistics recomputed, beats both.
    assert scratch > finetuned > frozen
    assert all(s > f > z for s, _, z, f in seeds.values())
    assert re.search(r"\| from scratch \| \d\.\d{3} ± \d\.\d{3} \| \d\.\d{3}-\d\.\d{3} \|( \d\.\d{3}){4} \|", first.stdout)
    assert "phase 1/2 'head'" in first.stdout and "phase 2/2 'top block'" in first.stdout
    assert first.stdout.count("phase 1/2") == 1  # phase lines for the seed whose files are written
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["frostline.png", "history.png", "model.keras", "report.md"]
    written = (tmp_path / "a" / "report.md").read_text()
    assert "| fine-tuned (top block unfrozen) |" in written and "## The fine-tuned model (seed 3)" in written

    # Seed 6, the last of that run, alone in this process: the same figures.
    alone = run_demo(str(tmp_path / "b"), seed=6, seeds=1, quick=True, verbose=0)
    assert [round(v, 3) for v in (alone.scratch, alone.scratch_moving_bn, alone.frozen, alone.finetuned)] == seeds[6]


def test_too_many_labels_per_class_is_refused():
    result = run_frostline("demo", "--labels-per-class", "500")
    assert result.returncode == 2
    assert "Expected labels_per_class between 1 and" in result.stderr


@pytest.mark.parametrize("seeds", [0, -2, 1.5, True])
def test_seeds_below_one_or_not_whole_are_refused_before_anything_is_written(tmp_path, seeds):
    with pytest.raises(ValueError, match=rf"Expected seeds to be a whole number, 1 or more. Received: seeds={seeds!r}"):
        run_demo(str(tmp_path / "out"), seeds=seeds, verbose=0)
    assert not (tmp_path / "out").exists()


def test_the_seeds_option_is_checked_before_anything_is_written(tmp_path):
    result = run_frostline("demo", "--seeds", "0", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.startswith("frostline demo: error: --seeds: "), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
