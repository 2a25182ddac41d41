#!/usr/bin/env bash
# Creates .venv beside the project (once) and installs frostline into it, editable,
# with the extras named as arguments: `bash scripts/setup.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
extras=""
if [ "$#" -gt 0 ]; then
    extras="[$(IFS=,; echo "$*")]"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
