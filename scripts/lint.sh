#!/usr/bin/env bash
# The linters and the type checker, as scripts/test.sh runs them (run it after scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
yamllint --strict .
# With `offline: true` ansible-lint keeps its stand-ins for mock_modules under $ANSIBLE_HOME (~/.ansible by
# default) and deletes them when it ends: two checkouts linted at once break each other's syntax check
# ("couldn't resolve module/action 'fail_with_details'"). Each checkout gets its own.
ANSIBLE_HOME="$PWD/.ansible" ansible-lint -q
mypy
