#!/usr/bin/env bash
# The main job, on the local lab: two throwaway VMs, `provision up` on them, then the smoke tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
set -x
provision lab up --hosts 2 --flavor docker
# The demo server's image, imported into Docker on lab1 without a registry (inventories/lab/serving.yml).
provision lab demo-image --vars-out inventories/lab/group_vars/inference.yml
provision up -i inventories/lab
provision test -i inventories/lab
# A reply streamed through nginx, token by token (the VM has no curl until asked).
provision lab ssh lab1 -- 'command -v curl >/dev/null || sudo apt-get install -qq -y curl >/dev/null;
  curl -sN localhost/v1/chat/completions -d "{\"stream\": true, \"max_tokens\": 24}"'
{ set +x; } 2>/dev/null
echo
echo "Done. The lab keeps running: 'provision lab ssh lab1' logs in, 'provision lab down' stops it."
