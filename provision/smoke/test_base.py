"""Smoke checks for the base role: run by `provision test` against every host in the inventory."""

from typing import Any

import pytest

from provision.smoke import checks


def test_sshd_running_and_enabled(host: Any) -> None:
    assert checks.sshd_problems(host) == []


def test_python3_runs(host: Any) -> None:
    assert checks.python_problems(host) == []


def test_package_mirror(host: Any, provision_vars: dict[str, Any]) -> None:
    if not host.exists("apt-get"):
        pytest.skip("not an apt-based host: base_apt_mirror does not apply")
    mirror = str(provision_vars.get("base_apt_mirror") or "")
    security = str(provision_vars.get("base_apt_security_mirror") or "")
    assert checks.mirror_problems(host, mirror, allowed=(security,)) == []


def test_no_reboot_pending(host: Any) -> None:
    assert checks.reboot_pending_problems(host) == []
