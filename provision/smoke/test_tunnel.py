"""Smoke checks for the tunnel role, run by `provision test` on every host (without tunnels: nothing to check)."""

from typing import Any

from provision.smoke import tunnel_checks
from provision.smoke.security_checks import Note


def test_tunnels_up(host: Any, provision_vars: dict[str, Any], nothing_to_check: Note) -> None:
    forwards = list(provision_vars.get("tunnel_forwards") or [])
    if not forwards:
        nothing_to_check("no tunnel_forwards on this host")
    assert tunnel_checks.tunnel_problems(host, forwards) == []
