#!/usr/bin/env bash
# Sets everything up, then runs the whole default test suite: ruff, mypy (strict for hactl/)
# and pytest (unit, shell, integration, kernel). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh test
. .venv/bin/activate
echo "== ruff"; ruff check hactl tests bench tools
echo "== mypy"; mypy
echo "== pytest"
if [ "$(id -u)" -eq 0 ]; then
    # As root the namespace and peer tests can run, so they must: conftest fails the run
    # when every integration test was skipped.
    export HACTL_REQUIRE_INTEGRATION=1
    export HACTL_REQUIRE_KERNEL_VM=1  # and a kernel VM that does not boot fails tests/kernel
fi
exec python -m pytest "$@"
