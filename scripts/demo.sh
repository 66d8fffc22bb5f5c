#!/usr/bin/env bash
# The main job, on the local lab: two throwaway VMs, `provision up` on them, then the smoke tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
set -x
provision lab up --hosts 2
provision up -i inventories/lab
provision test -i inventories/lab
{ set +x; } 2>/dev/null
echo
echo "Done. The lab keeps running: 'provision lab ssh lab1' logs in, 'provision lab down' stops it."
