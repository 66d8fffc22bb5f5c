"""The nginx role's TLS profiles are Mozilla's, and the gateway's config carries them (stapling only when asked)."""

import json
from pathlib import Path
from typing import Any

import pytest
import sslyze.mozilla_tls_profile

from provision import argcheck, paths, render
from provision.inventory import Inventory
from provision.smoke import serving_checks

# Mozilla's own guidelines as data (https://ssl-config.mozilla.org/guidelines/5.7.json), the file sslyze ships
# and checks servers against.
MOZILLA = json.loads((Path(sslyze.mozilla_tls_profile.__file__).parent / "5.7.json").read_text())
PROFILES = argcheck.role_vars(paths.ROLES / "nginx")["__nginx_tls_profiles"]


@pytest.mark.parametrize("profile", ["intermediate", "modern"])
def test_the_role_profiles_are_mozillas_5_7(profile: str) -> None:
    mozilla = MOZILLA["configurations"][profile]
    assert MOZILLA["version"] == 5.7
    assert PROFILES[profile]["protocols"] == sorted(mozilla["tls_versions"])
    assert PROFILES[profile]["ciphers"] == mozilla["ciphers"]["openssl"]  # in Mozilla's order
    assert PROFILES[profile]["curves"] == mozilla["tls_curves"]


def nginx_conf(task_vars: dict[str, Any] | None = None, **hostvars: Any) -> str:
    groups = {"gateway": ("h1",)}
    inventory = Inventory(
        path=Path("inventories/test/hosts.yml"), hosts=("h1",), hostvars={"h1": hostvars}, groups=groups
    )
    variables = render.HostVars(inventory, "h1", task_vars)
    return variables.render_file(Path(variables["__nginx_conf_src"]), "nginx/nginx.conf.j2")


def test_stapling_only_when_the_certificate_names_a_responder() -> None:
    stapling = {"responder": "http://ocsp.example.test", "resolvers": ["10.0.2.3", "[::1]"],
                "trusted_certificate": "/etc/ssl/certs/ca-certificates.crt"}  # fmt: skip
    stapled = nginx_conf({"__nginx_tls_stapling": stapling}, nginx_tls=True)
    for line in ("ssl_stapling on;", "ssl_stapling_verify on;", "resolver 10.0.2.3 [::1];",
                 "ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;"):  # fmt: skip
        assert f"\n        {line}\n" in stapled
    assert "ssl_stapling" not in nginx_conf(nginx_tls=True)
    assert "resolver" not in nginx_conf(nginx_tls=True)


def test_no_tls_settings_without_tls() -> None:
    plain = nginx_conf(nginx_tls_profile="modern", nginx_hsts_max_age=63072000)
    assert "ssl_" not in plain and "Strict-Transport-Security" not in plain


# ---- provision test: the live config's TLS lines are the profile's ---------------------------------------------

GOLDEN = Path(__file__).parents[1] / "golden" / "render"


@pytest.mark.parametrize(
    ("case", "profile"), [("gateway-tls-auth-replicas", "intermediate"), ("gateway-tls-modern-hsts", "modern")]
)
def test_the_rendered_config_has_no_drift(case: str, profile: str) -> None:
    config = (GOLDEN / case / "expected" / "nginx.conf").read_text()
    assert serving_checks.tls_profile_drift(config, PROFILES[profile], profile) == []


def test_a_hand_edit_or_a_missing_line_is_named() -> None:
    config = (GOLDEN / "gateway-tls-auth-replicas" / "expected" / "nginx.conf").read_text()
    edited = config.replace("ssl_protocols TLSv1.2 TLSv1.3;", "ssl_protocols TLSv1 TLSv1.2  TLSv1.3;")
    edited = edited.replace("        ssl_ecdh_curve X25519:prime256v1:secp384r1;\n", "")
    edited += "    # conf.d\n    ssl_ciphers HIGH:!aNULL; # an admin's own\n"
    where = "(nginx_tls_profile intermediate; provision up restores it)"
    assert serving_checks.tls_profile_drift(edited, PROFILES["intermediate"], "intermediate") == [
        f"nginx sets ssl_protocols TLSv1 TLSv1.2 TLSv1.3, expected TLSv1.2 TLSv1.3 {where}",
        f"nginx sets ssl_ciphers HIGH:!aNULL, expected {':'.join(PROFILES['intermediate']['ciphers'])} {where}",
        f"nginx sets no ssl_ecdh_curve, expected X25519:prime256v1:secp384r1 {where}",
    ]
    # The intermediate config is drift for a host meant to be modern (TLS 1.2 still on).
    (drift,) = serving_checks.tls_profile_drift(config, PROFILES["modern"], "modern")
    assert drift.startswith("nginx sets ssl_protocols TLSv1.2 TLSv1.3, expected TLSv1.3 ")
