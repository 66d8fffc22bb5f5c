#!/usr/bin/env bash
# One-time (and idempotent) set-up of this machine for provision: host packages for the local lab,
# then a virtualenv in .venv with provision and its dev tools.  Safe to re-run: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus brings promtool, which checks the generated Prometheus config and unit-tests the alert rules.
host_packages=(qemu-system-x86 qemu-utils mmdebstrap apt-cacher-ng openssh-client e2fsprogs python3-venv prometheus)
missing=()
for pkg in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # apt-cacher-ng's postinst must not start a system-wide daemon: the lab starts its own when needed.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

stamp=.venv/.provision-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: creating .venv with provision and its dependencies"
  python3 -m venv .venv
  if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' > .venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
