#!/bin/bash
# What `provision doctor` (and `provision up`) need on a machine that has python3 (3.11-3.13) but no network and
# no pip: ansible-core, ansible-runner, Mitogen and their dependencies, copied from this checkout's .venv into
# .venv/device-bundle (~30 MiB; compiled speedups that do not match the other Python fall back to pure Python).
# Copy the checkout with that directory to the machine, then, from the repository root there:
#
#   export PATH=$PWD/.venv/device-bundle/bin:$PATH PYTHONPATH=$PWD/.venv/device-bundle/lib:$PWD
#   python3 -m provision doctor -i inventories/local
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
out=.venv/device-bundle
rm -rf "$out"
mkdir -p "$out/lib" "$out/bin"
for package in ansible ansible_runner ansible_mitogen mitogen jinja2 markupsafe yaml cryptography packaging \
    resolvelib click pexpect ptyprocess daemon lockfile; do
    cp -r "$site/$package" "$out/lib/"
done
cp -r "$site"/*.dist-info "$out/lib/"  # entry points and versions that ansible-runner and ansible-core look up
# ansible-runner starts these by name; PYTHONPATH does not reach them (provision passes an allow-listed
# environment), so each finds the bundle from where it lies.
for tool in playbook inventory config; do
    cat > "$out/bin/ansible-$tool" <<SCRIPT
#!/usr/bin/env python3
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "lib"))
from ansible.cli.$tool import main
sys.exit(main())
SCRIPT
    chmod +x "$out/bin/ansible-$tool"
done
find "$out" -name __pycache__ -type d -prune -exec rm -rf {} +
du -sh "$out"
