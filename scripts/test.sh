#!/usr/bin/env bash
# Sets everything up and runs the tests: the whole suite on JAX; the keras-hub tests
# (tests/hub/) in a virtual environment with keras-hub: all of them on JAX, the keras-hub
# core (marker hub_core: all but the docs page's examples) on TensorFlow and on PyTorch;
# then the backend-parity suite (tests/parity/) on TensorFlow and on PyTorch, each in its
# own process and virtual environment. Arguments go to the main JAX run of pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
reports=$(mktemp -d)
failed=0

run() {  # run LABEL BACKEND VENV PYTEST-ARGS...
    local label=$1 backend=$2 venv=$3
    shift 3
    echo "== $label ($backend): pytest $*"
    KERAS_BACKEND=$backend "$venv/bin/python" -m pytest --junitxml="$reports/$label.xml" "$@"
    local status=$?
    if [ "$status" -eq 5 ]; then
        echo "scripts/test.sh: pytest ran no tests for $label; that is a failure here" >&2
        status=1
    fi
    if [ "$status" -ne 0 ]; then
        failed=1
    fi
}

bash scripts/setup.sh test || exit 1
run jax jax .venv "$@"
# keras-hub brings TensorFlow along (tensorflow-text), which the main JAX environment
# must not have: its backend and image-folder tests are about a machine without it.
# With torch added, the one environment runs keras-hub on all three backends.
bash scripts/setup.sh --venv .venv-hub hub torch test || exit 1
FROSTLINE_REQUIRE_HUB=1 run keras-hub-jax jax .venv-hub tests/hub
for backend in tensorflow torch; do
    FROSTLINE_REQUIRE_HUB=1 run "keras-hub-$backend" "$backend" .venv-hub tests/hub -m hub_core
done
for backend in tensorflow torch; do
    bash scripts/setup.sh --venv ".venv-$backend" "$backend" test || exit 1
    run "$backend" "$backend" ".venv-$backend" tests/parity
done

# One closing line over all runs.
.venv/bin/python - "$reports" <<'PY'
import sys, glob, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for path in sorted(glob.glob(sys.argv[1] + "/*.xml")):
    for suite in ET.parse(path).getroot().iter("testsuite"):
        total, errors, fails, skips = (int(suite.get(k, 0)) for k in ("tests", "errors", "failures", "skipped"))
        passed += total - errors - fails - skips
        failed += errors + fails
        skipped += skips
print(f"total: {passed} passed, {failed} failed, {skipped} skipped")
PY
rm -rf "$reports"
exit "$failed"
