#!/usr/bin/env bash
# One-time (and idempotent) set-up of this machine for provision: host packages for the local lab,
# then a virtualenv in .venv with provision and its dev tools.  Safe to re-run: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus brings promtool, which checks the generated Prometheus config and unit-tests the alert rules; nginx
# runs the rendered gateway config in front of the demo server in unit tests (never started as a service here).
host_packages=(qemu-system-x86 qemu-utils mmdebstrap apt-cacher-ng openssh-client e2fsprogs python3-venv prometheus
  nginx)
# qemu from bookworm-backports (10.0; bookworm has 7.2): the lab's guests run under TCG emulation, and 10.0 runs
# them faster where Ansible's work is (a guest forks 200 processes in 4.4-5.4 s instead of 13.3-14.4 s; a fresh
# VM's site.yml converge took 16% less guest CPU). Any qemu works; setup upgrades an older one once.
qemu_packages=(qemu-system-x86 qemu-utils)
qemu_wanted=1:10.0
bookworm=false
grep -qs '^VERSION_CODENAME=bookworm$' /etc/os-release && bookworm=true
missing=()
backports=()
for pkg in "${host_packages[@]}"; do
  if $bookworm && [[ " ${qemu_packages[*]} " == *" $pkg "* ]]; then
    installed=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    if [[ -z "$installed" ]] || dpkg --compare-versions "$installed" lt "$qemu_wanted"; then
      backports=("${qemu_packages[@]}")
    fi
  else
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  fi
done
if ((${#missing[@]} + ${#backports[@]})); then
  shown=("${missing[@]}" "${backports[@]/%/ (bookworm-backports)}")
  echo "setup: installing host packages: ${shown[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ((${#backports[@]})) && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n%s\n' \
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > /etc/apt/sources.list.d/provision-backports.sources
  fi
  apt-get update -qq
  # apt-cacher-ng's and nginx's postinst must not start system-wide daemons: the lab and the tests start their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  if ((${#missing[@]})); then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ((${#backports[@]})); then
    apt-get install -y -qq --no-install-recommends -t bookworm-backports "${backports[@]}" >/dev/null
  fi
  rm -f /usr/sbin/policy-rc.d
fi

stamp=.venv/.provision-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: creating .venv with provision and its dependencies"
  python3 -m venv .venv
  # --no-compile: pip would byte-compile all ~19,000 modules it installs, ~15,000 of them in the collections the
  # ansible package bundles, which nothing here imports (51 s -> 30 s, 49 -> 30 CPU-s, before anything else can
  # start); Python compiles what is imported, once, when it is.
  if ! .venv/bin/pip install -q --no-compile --disable-pip-version-check -e '.[dev]' > .venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
