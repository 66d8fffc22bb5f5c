"""The nginx role's TLS profiles are Mozilla's, and the gateway's config carries them (stapling only when asked)."""

import json
from pathlib import Path
from typing import Any

import pytest
import sslyze.mozilla_tls_profile

from provision import argcheck, paths, render
from provision.inventory import Inventory

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
    return render._render(render.HostVars(inventory, "h1", task_vars), "nginx/nginx.conf.j2")


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
