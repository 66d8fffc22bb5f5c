#!/usr/bin/env bash
# The whole test suite: linters, unit and golden tests, then integration tests on real lab VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== lint"
ruff check .
ruff format --check .
yamllint --strict .
ansible-lint -q
echo "== tests"
# Each provision call of the integration tests, timed (the slowest are listed at the end).
export PROVISION_TEST_TIMINGS="${PROVISION_TEST_TIMINGS:-$(mktemp -t provision-timings.XXXXXX)}"
exec pytest -ra --durations=20 "$@"
