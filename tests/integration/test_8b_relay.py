"""The nginx role's relay preset on the session lab's lab2, in front of stand-in upstream HTTPS APIs on lab2's own
loopback (tests/integration/relay_upstream.py), with certificates of a throwaway CA made for this run.

Routes: /api/ to an upstream whose certificate the CA signed, /untrusted/ to one with a self-signed certificate.
The relay takes 127.0.0.1 only (lab2's own address on its NIC is outside the allow-list) and a password.
No VM of its own: lab2 is the session's.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from labtools import Lab, inventory_with, phase, recap

HOST = "lab2"
UPSTREAM = "upstream.test"
GOOD_PORT, UNTRUSTED_PORT, RELAY_PORT = 18501, 18502, 18443
HERE = Path(__file__).parent
REMOTE = "/tmp/relay-test"


@dataclass
class Relay:
    lab: Lab
    inventory: Path
    password: str
    ca: Path

    def up(self, *more: str) -> tuple[int, str]:
        with phase("test_8b: provision up --tags nginx"):
            proc = self.lab.provision("up", "-i", str(self.inventory), "--tags", "nginx", "--limit", HOST, *more)
        return proc.returncode, proc.stdout + proc.stderr

    def get(self, path: str, *more: str, password: bool = True, address: str = "127.0.0.1") -> dict:
        """The relay client's answer; the password goes on its stdin."""
        stdin = f"team:{self.password}" if password else ""
        command = f"python3 {REMOTE}/relay_client.py https://{address}:{RELAY_PORT}{path} {' '.join(more)}"
        return json.loads(self.lab.sh(HOST, command, stdin=stdin).strip().splitlines()[-1])


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A throwaway CA and the upstream's certificate it signs; a self-signed one for the untrusted upstream."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    name = ("-subj", f"/CN={UPSTREAM}", "-addext", f"subjectAltName=DNS:{UPSTREAM}")
    d = str(directory)
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=provision test CA", "-keyout", f"{d}/ca.key",
            "-out", f"{d}/ca.pem")  # fmt: skip
    openssl("req", *ec, *name, "-keyout", f"{d}/good.key", "-out", f"{d}/good.csr")
    openssl("x509", "-req", "-in", f"{d}/good.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key", "-days", "2",
            "-copy_extensions", "copy", "-out", f"{d}/good.pem")  # fmt: skip
    openssl("req", "-x509", *ec, *name, "-days", "2", "-keyout", f"{d}/untrusted.key", "-out", f"{d}/untrusted.pem")


@pytest.fixture(scope="module")
def relay(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    work = tmp_path_factory.mktemp("relay")
    make_certificates(work)
    lab.sh(HOST, f"rm -rf {REMOTE} && mkdir -m 700 {REMOTE}")
    for name in ("good.pem", "good.key", "untrusted.pem", "untrusted.key", "ca.pem"):
        lab.sh(HOST, f"umask 077; cat > {REMOTE}/{name}", stdin=(work / name).read_text())
    for script in ("relay_upstream.py", "relay_client.py"):
        lab.sh(HOST, f"cat > {REMOTE}/{script}", stdin=(HERE / script).read_text())
    lab.sh(HOST, f"grep -q ' {UPSTREAM}$' /etc/hosts || echo '127.0.0.1 {UPSTREAM}' | sudo tee -a /etc/hosts")
    for unit, port, cert in (
        ("relay-test-good", GOOD_PORT, "good"),
        ("relay-test-untrusted", UNTRUSTED_PORT, "untrusted"),
    ):
        lab.ssh(HOST, f"sudo systemctl stop {unit}")  # one left by a run that was cut short
        lab.sh(HOST, f"sudo systemd-run --unit {unit} python3 {REMOTE}/relay_upstream.py {port} "
                     f"{REMOTE}/{cert}.pem {REMOTE}/{cert}.key")  # fmt: skip
    password = secrets.token_urlsafe(18)
    settings = {
        "nginx_preset": "relay",
        "nginx_tls": True,
        "nginx_tls_port": RELAY_PORT,
        "nginx_relay_routes": [
            {"path": "/api/", "upstream": f"https://{UPSTREAM}:{GOOD_PORT}/v1/"},
            {"path": "/untrusted/", "upstream": f"https://{UPSTREAM}:{UNTRUSTED_PORT}/v1/"},
        ],
        "nginx_relay_trusted_ca_src": str(work / "ca.pem"),
        "nginx_allow_from": ["127.0.0.1"],
        "nginx_basic_auth_users": [{"name": "team", "password": password}],
    }
    inventory = inventory_with(lab, work, {HOST: settings})
    (inventory / "relay.yml").write_text(yaml.safe_dump({"all": {"children": {"gateway": {"hosts": {HOST: None}}}}}))
    # The package mirror, as a converged host has it (nginx comes from there); a no-op after the site-wide runs.
    lab.provision("up", "-i", str(inventory), "--tags", "base", "--limit", HOST, check=True)
    try:
        yield Relay(lab=lab, inventory=inventory, password=password, ca=work / "ca.pem")
    finally:  # the session's lab2 as it was: no relay, no stand-in upstreams
        lab.ssh(HOST, "sudo systemctl disable --now nginx; sudo systemctl stop relay-test-good relay-test-untrusted")
        lab.ssh(HOST, f"rm -rf {REMOTE}")


def test_check_mode_on_a_fresh_host_changes_nothing(relay: Relay) -> None:
    look = "dpkg-query -W -f='${Status}' nginx 2>&1; sudo ls /etc/nginx 2>&1"
    before = relay.lab.ssh(HOST, look).stdout
    code, output = relay.up("--check")
    assert code == 0, output
    assert recap(output)[HOST]["changed"] > 0
    assert relay.lab.ssh(HOST, look).stdout == before


def test_the_relay_lets_in_the_right_clients_and_trusts_only_its_ca(relay: Relay) -> None:
    code, output = relay.up("--keep-artifacts")
    artifacts = Path(re.search(r"artifacts kept in (\S+)", output)[1])
    try:
        assert code == 0, output
        assert recap(output)[HOST]["changed"] > 0
        # The password is in no output, artifact or rendered file; the CA's key never left the controller.
        rendered = relay.lab.provision("render", "-i", str(relay.inventory), "--host", HOST)
        assert rendered.returncode == 0 and "proxy_ssl_verify on;" in rendered.stdout, rendered.stderr
        for text in (output, rendered.stdout + rendered.stderr):
            assert relay.password not in text
        for path in artifacts.rglob("*"):
            assert not path.is_file() or relay.password not in path.read_text(errors="replace"), path

        answered = relay.get("/api/echo")
        assert answered == {"status": 200, "body": {"host": f"{UPSTREAM}:{GOOD_PORT}", "authorization": False}}
        assert relay.get("/api/echo", password=False)["status"] == 401
        # lab2's own IPv4 address on its NIC: not 127.0.0.1.
        outside = next(address for address in relay.lab.sh(HOST, "hostname -I").split() if ":" not in address)
        assert relay.get("/api/echo", address=outside)["status"] == 403
        assert relay.get("/untrusted/echo")["status"] == 502
        errors = relay.lab.sh(HOST, "sudo tail -n 20 /var/log/nginx/error.log")
        assert "upstream SSL certificate verify error" in errors, errors

        # The first event arrives while the upstream still holds the last one back until the client asks.
        streamed = relay.get("/api/stream", "--stream", f"https://{UPSTREAM}:{GOOD_PORT}/release", f"{REMOTE}/ca.pem")
        assert streamed == {"status": 200, "first": "data: first", "first_before_release": True,
                            "rest": ["data:", "last"]}  # fmt: skip

        code, again = relay.up()
        assert code == 0 and recap(again)[HOST]["changed"] == 0, again
        smoke = relay.lab.provision("test", "-i", str(relay.inventory), "--limit", HOST, "-k", "gateway")
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)


def test_a_relay_without_tls_or_access_control_is_refused_before_any_change(relay: Relay) -> None:
    inventory = relay.inventory
    settings = yaml.safe_load((inventory / "host_vars" / f"{HOST}.yml").read_text())
    open_relay = {**settings, "nginx_tls": False, "nginx_allow_from": [], "nginx_basic_auth_users": []}
    (inventory / "host_vars" / f"{HOST}.yml").write_text(yaml.safe_dump(open_relay))
    try:
        before = relay.lab.sh(HOST, "sudo sha256sum /etc/nginx/nginx.conf")
        code, output = relay.up()
        assert code == 1, output
        assert "nginx_preset relay needs nginx_tls: true" in output, output
        assert "nginx_preset relay needs nginx_basic_auth_users or nginx_allow_from" in output, output
        assert relay.lab.sh(HOST, "sudo sha256sum /etc/nginx/nginx.conf") == before
    finally:
        (inventory / "host_vars" / f"{HOST}.yml").write_text(yaml.safe_dump(settings))
