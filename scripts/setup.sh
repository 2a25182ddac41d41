#!/usr/bin/env bash
# Creates a virtual environment beside the project (once) and installs frostline into
# it, editable, with the extras named as arguments.
#   bash scripts/setup.sh test                          # .venv with the test extra
#   bash scripts/setup.sh --venv .venv-torch torch test
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ "${1:-}" = "--venv" ]; then
    venv=$2
    shift 2
fi
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
extras=""
if [ "$#" -gt 0 ]; then
    extras="[$(IFS=,; echo "$*")]"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c scripts/constraints.txt -e ".${extras}"
