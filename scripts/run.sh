#!/usr/bin/env bash
# Sets everything up and runs the main job: the demo (pretrain on digits 0-4, transfer to
# 5-9 with few labels, compare with training from scratch). Output in frostline-demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
KERAS_BACKEND="${KERAS_BACKEND:-jax}" .venv/bin/frostline demo --out frostline-demo "$@"
