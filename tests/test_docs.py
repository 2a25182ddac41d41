"""The README's example runs and prints what the README shows."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs_and_prints_what_it_shows(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code, shown = re.findall(r"```(?:python)?\n(.*?)```", readme, re.S)[:2]
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)  # nothing configured: frostline must pick JAX
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == shown.strip()
