"""Smoke checks for the ways out (egress.yml): run by `provision test` on every host; a host that configures none
has nothing to check."""

from typing import Any

from provision.smoke import egress_checks


def test_openvpn_client_routes_only_its_destinations(
    host: Any, provision_vars: dict[str, Any], nothing_to_check: egress_checks.Note
) -> None:
    name = str(provision_vars["openvpn_client_name"]) if provision_vars.get("openvpn_client_remote") else ""
    assert egress_checks.openvpn_client_problems(host, name, nothing_to_check) == []
