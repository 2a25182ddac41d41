#!/usr/bin/env bash
# Sets everything up and runs the main job: inspect the shipped example model under the
# shipped plan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/frostline inspect examples/small_cnn.keras --plan examples/plan.yaml
