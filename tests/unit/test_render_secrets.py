"""provision render masks private keys on screen and writes them exactly with --out (the OpenVPN client config
carries its key inline)."""

from pathlib import Path
from typing import Any

from provision.render import mask_secrets

CASE = Path(__file__).parents[1] / "golden" / "render" / "openvpn-client"


def test_keys_are_masked_on_screen_and_exact_in_out(run_cli: Any, tmp_path: Path) -> None:
    shown = run_cli("render", "-i", str(CASE / "inventory.yml"), "--host", "egress1")
    assert shown.code == 0
    assert "(golden case: not a key)" not in shown.out
    assert shown.out.count("(secret: 1 line, masked on screen; --out writes them)") == 2  # the key, tls-crypt
    assert shown.out.count("(golden case: not a certificate)") == 2  # certificates are not secret
    written = run_cli("render", "-i", str(CASE / "inventory.yml"), "--host", "egress1", "--out", str(tmp_path))
    assert written.code == 0
    assert (tmp_path / "egress.conf").read_bytes() == (CASE / "expected" / "egress.conf").read_bytes()


def test_only_the_bodies_of_private_and_static_keys_are_masked() -> None:
    text = (
        "<key>\n-----BEGIN EC PRIVATE KEY-----\nAAAA\nBBBB\n-----END EC PRIVATE KEY-----\n</key>\n"
        "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n"
        "-----BEGIN OpenVPN Static key V1-----\nDDDD\n-----END OpenVPN Static key V1-----\n"
    )
    assert mask_secrets(text) == (
        "<key>\n-----BEGIN EC PRIVATE KEY-----\n(secret: 2 lines, masked on screen; --out writes them)\n"
        "-----END EC PRIVATE KEY-----\n</key>\n"
        "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n"
        "-----BEGIN OpenVPN Static key V1-----\n(secret: 1 line, masked on screen; --out writes them)\n"
        "-----END OpenVPN Static key V1-----\n"
    )
    assert mask_secrets("no keys here\n") == "no keys here\n"
