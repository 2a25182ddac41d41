"""The demo at full size, timed: `python benchmarks/demo.py [--seed N]`.

Prints the demo's wall time and its accuracies. The demo's target is under two minutes
on a 2-core CPU.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import frostline  # noqa: E402,F401
from frostline.app.demo import run_demo  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    result = run_demo(out, seed=args.seed, verbose=0)
    elapsed = time.perf_counter() - start
print(f"demo wall time: {elapsed:.1f} s (target: under 120 s on 2 cores)")
print(result.summary_line())
