"""Smoke checks for the ssh, selinux and firewall roles: run by `provision test` on every host."""

from typing import Any

import pytest

from provision.smoke import security_checks as sec


def test_sshd_config_valid(host: Any) -> None:
    assert sec.sshd_config_problems(host) == []


def test_sshd_algorithms_as_configured(host: Any, provision_vars: dict[str, Any]) -> None:
    """Key exchange, host key, cipher and MAC lists: the ssh role's profile, not a hand edit or the distro's."""
    assert sec.sshd_algorithm_problems(host, str(provision_vars["ssh_crypto_profile"])) == []


def test_password_login_refused(host: Any, provision_vars: dict[str, Any]) -> None:
    if provision_vars.get("ssh_password_authentication"):
        pytest.skip("ssh_password_authentication is true: passwords are allowed on purpose")
    address, port, user = sec.login_target(provision_vars, host.backend.host)
    assert sec.password_login_problems(address, port, user) == []


def test_key_login_works(host: Any, provision_vars: dict[str, Any]) -> None:
    assert sec.key_login_problems(sec.key_login_argv(provision_vars, host.backend.host)) == []


def test_selinux_as_configured(host: Any, provision_vars: dict[str, Any], nothing_to_check: sec.Note) -> None:
    """On hosts without SELinux there is nothing to check (the role changes nothing there), unless a mode is asked."""
    booleans = list(provision_vars.get("selinux_booleans") or [])
    state = str(provision_vars.get("selinux_state") or "")
    assert sec.selinux_problems(host, state, booleans, nothing_to_check) == []


def test_firewall_ports_open(host: Any, provision_vars: dict[str, Any], nothing_to_check: sec.Note) -> None:
    if str(provision_vars.get("firewall_mode")) == "none":
        pytest.skip("firewall_mode is none: the cloud's security list is the only firewall")
    ports = sec.firewall_ports(provision_vars)
    rules_file = str(provision_vars.get("firewall_iptables_rules_file") or "/etc/iptables/rules.v4")
    assert sec.firewall_problems(host, ports, rules_file, nothing_to_check) == []
