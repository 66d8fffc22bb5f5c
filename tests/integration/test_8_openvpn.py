"""The openvpn_client role on the session lab: lab2 runs an OpenVPN server (set up here, with a CA and
certificates made now with openssl, never kept), lab1 gets the role, over the private segment (10.77.0.0/24).

Behind the server is a test web server on 10.79.0.1 (a dummy interface on lab2). The server pushes a default
route and a route for 10.0.0.0/8 (where the controller's SSH comes from); the client must take neither. The
client is stopped and the server removed at the end: the session lab is left as it was found, but for the
packages.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from labtools import ROOT, Lab, inventory_with, recap

CLIENT, SERVER = "lab1", "lab2"
BEHIND = "10.79.0.1"  # the test web server behind the VPN server
WEB_PORT = 8079
DESTINATIONS = ["10.79.0.0/24", "2001:db8:79::/64"]
DEVICE = "tun-egress"
UNIT = "openvpn-client@egress"
TAGS = ("--tags", "openvpn_client", "--limit", CLIENT)

SERVER_CONF = """\
port 1194
proto udp
dev tun
topology subnet
server 10.78.0.0 255.255.255.0
server-ipv6 fd00:78::/64
ca ca.crt
cert server.crt
key server.key
tls-crypt tc.key
dh none
keepalive 5 30
# What a careless or hostile server pushes: everything, and the range the controller's SSH comes from.
push "redirect-gateway def1"
push "route 10.0.0.0 255.0.0.0"
verb 3
"""
# stdin is the tar of the server's files: tar reads it first, apt-get never (it may ask debconf on stdin).
SERVER_SETUP = f"""\
set -e
sudo mkdir -p /etc/openvpn/server
sudo tar -x -C /etc/openvpn/server
sudo DEBIAN_FRONTEND=noninteractive apt-get install -qqy openvpn </dev/null >/dev/null
sudo chmod 0600 /etc/openvpn/server/server.key /etc/openvpn/server/tc.key
sudo ip link add vpn-behind type dummy 2>/dev/null || true
sudo ip address replace {BEHIND}/32 dev vpn-behind
sudo ip link set vpn-behind up
sudo mkdir -p /srv/behind && echo behind-the-vpn | sudo tee /srv/behind/index.html >/dev/null
sudo systemd-run --unit vpn-test-web python3 -m http.server --bind {BEHIND} --directory /srv/behind {WEB_PORT}
sudo systemctl start openvpn-server@lab
"""
SERVER_TEARDOWN = """\
sudo systemctl stop openvpn-server@lab vpn-test-web || true
sudo ip link del vpn-behind || true
sudo rm -rf /etc/openvpn/server/* /srv/behind
"""
FETCH = f"import urllib.request as r; print(r.urlopen('http://{BEHIND}:{WEB_PORT}/', timeout=20).read().decode())"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    """A throwaway CA, a server and a client certificate (EC P-256), and a tls-crypt key, made now."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=lab test CA", "-keyout", "ca.key", "-out", "ca.crt",
            cwd=directory)  # fmt: skip
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        openssl("req", *ec, "-subj", f"/CN=lab-{name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
        (directory / f"{name}.ext").write_text(f"extendedKeyUsage={usage}\nkeyUsage=digitalSignature\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory)  # fmt: skip
    body = secrets.token_hex(256)
    lines = [body[i : i + 32] for i in range(0, len(body), 32)]
    key = ["-----BEGIN OpenVPN Static key V1-----", *lines, "-----END OpenVPN Static key V1-----"]
    (directory / "tc.key").write_text("\n".join(key) + "\n")
    for path in directory.iterdir():
        path.chmod(0o600)


@dataclass
class Vpn:
    lab: Lab
    inventory: Path
    pki: Path
    outputs: list[str] = field(default_factory=list)

    def up(self, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.lab.provision("up", "-i", str(inventory or self.inventory), *TAGS, *args)
        self.outputs.append(proc.stdout + proc.stderr)
        return proc

    def secrets(self) -> list[str]:
        """A line from the body of each key (never a header line, which is not secret)."""
        found = []
        for name in ("client.key", "tc.key", "server.key", "ca.key"):
            body = [line for line in (self.pki / name).read_text().splitlines() if not line.startswith("-----")]
            found.append(body[1] if len(body) > 1 else body[0])
        return found


@pytest.fixture(scope="module")
def vpn(lab: Lab, converged: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vpn]:
    """The server on lab2, and an inventory whose lab1 host_vars configure the client (credentials as files on the
    controller, 0600, outside the inventory)."""
    work = tmp_path_factory.mktemp("openvpn")
    pki = work / "pki"
    pki.mkdir(mode=0o700)
    make_pki(pki)
    hosts = yaml.safe_load((lab.inventory / "hosts.yml").read_text())["all"]["children"]["lab"]["hosts"]
    settings = {
        "openvpn_client_remote": hosts[SERVER]["private_address"],
        "openvpn_client_destinations": DESTINATIONS,
        "openvpn_client_ca_file": str(pki / "ca.crt"),
        "openvpn_client_cert_file": str(pki / "client.crt"),
        "openvpn_client_key_file": str(pki / "client.key"),
        "openvpn_client_tls_crypt_file": str(pki / "tc.key"),
    }
    inventory = inventory_with(lab, work, {CLIENT: settings})
    (pki / "lab.conf").write_text(SERVER_CONF)
    files = ["lab.conf", "ca.crt", "server.crt", "server.key", "tc.key"]
    tarball = work / "server.tar"
    subprocess.run(["tar", "-c", "-f", str(tarball), "-C", str(pki), *files], check=True)
    tarball.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "provision", "lab", "ssh", SERVER, "--", SERVER_SETUP],
        cwd=ROOT, env=lab.env, stdin=tarball.open("rb"), capture_output=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    tarball.unlink()
    try:
        yield Vpn(lab, inventory, pki)
    finally:
        lab.ssh(CLIENT, f"sudo systemctl disable --now {UNIT}")
        lab.ssh(SERVER, SERVER_TEARDOWN)
        shutil.rmtree(pki, ignore_errors=True)


def test_metadata_destination_is_refused_before_any_change(vpn: Vpn, tmp_path: Path) -> None:
    hostvars = yaml.safe_load((vpn.inventory / "host_vars" / f"{CLIENT}.yml").read_text())
    hostvars["openvpn_client_destinations"] = [*DESTINATIONS, "169.254.169.254"]
    refused = vpn.up(inventory=inventory_with(vpn.lab, tmp_path, {CLIENT: hostvars}))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    said = " ".join(refused.stdout.split())
    assert "169.254.169.254/32 covers 169.254.0.0/16 (link-local, where clouds serve metadata" in said, said
    assert "Nothing was changed" in said
    assert vpn.lab.ssh(CLIENT, "dpkg -s openvpn").returncode != 0, "openvpn was installed before the refusal"


def test_check_mode_on_a_fresh_client_changes_nothing(vpn: Vpn) -> None:
    check = vpn.up("--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert vpn.lab.ssh(CLIENT, "dpkg -s openvpn").returncode != 0
    assert vpn.lab.ssh(CLIENT, "test -e /etc/openvpn/client/egress.conf").returncode != 0


@pytest.fixture(scope="module")
def first_run(vpn: Vpn) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    """The role's first run, with the artifacts kept, while an SSH session to the client stays open."""
    session = subprocess.Popen(
        [sys.executable, "-m", "provision", "lab", "ssh", CLIENT, "--", "echo open; read line; echo still-open"],
        cwd=ROOT, env=vpn.lab.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert session.stdout is not None and session.stdin is not None
    assert session.stdout.readline().strip() == "open"
    first = vpn.up("--keep-artifacts")
    session.stdin.write("go on\n")
    session.stdin.flush()
    survived = session.stdout.readline().strip()
    session.wait(timeout=120)
    assert survived == "still-open", "the SSH session open during the run did not survive it"
    found = re.search(r"artifacts kept in (\S+)", first.stdout)
    artifacts = Path(found[1]) if found else vpn.pki / "none"
    try:
        yield first, artifacts
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)


def test_first_run_connects_and_routes_only_the_destinations(vpn: Vpn, first_run: tuple) -> None:
    first, _ = first_run
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout)[CLIENT]["changed"] > 0
    route = vpn.lab.sh(CLIENT, f"ip route get {BEHIND}; ip -6 route get 2001:db8:79::1")
    assert route.count(f" dev {DEVICE} ") == 2, route
    # Everything else keeps its route: the metadata address, the controller's side of the SSH session (despite the
    # pushed 10.0.0.0/8), the VPN server, and the rest of the world (despite the pushed default route).
    for address in ("169.254.169.254", "100.100.100.200", "10.0.2.2", "10.77.0.2", "192.0.2.1"):
        other = vpn.lab.sh(CLIENT, f"ip route get {address}")
        assert DEVICE not in other, other


def test_a_server_behind_the_vpn_answers_through_it(vpn: Vpn, first_run: tuple) -> None:
    assert vpn.lab.sh(CLIENT, "python3 -", stdin=FETCH).strip() == "behind-the-vpn"


def test_provision_test_checks_the_routes(vpn: Vpn, first_run: tuple) -> None:
    smoke = vpn.lab.provision("test", "-i", str(vpn.inventory), "--limit", CLIENT, "-k", "openvpn")
    vpn.outputs.append(smoke.stdout + smoke.stderr)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "1 passed" in smoke.stdout, smoke.stdout


def test_killed_client_is_brought_back_by_systemd(vpn: Vpn, first_run: tuple) -> None:
    before = vpn.lab.sh(CLIENT, f"systemctl show -p MainPID --value {UNIT}").strip()
    vpn.lab.sh(CLIENT, f"sudo kill -KILL {before}")
    # Until the unit runs again under a new pid with the route back (restart delay plus a TLS handshake under TCG).
    waited = vpn.lab.ssh(
        CLIENT,
        f"for i in $(seq 300); do pid=$(systemctl show -p MainPID --value {UNIT}); "
        f'if [ "$pid" != 0 ] && [ "$pid" != {before} ] && ip route get {BEHIND} | grep -q \' dev {DEVICE} \'; '
        "then echo back; exit 0; fi; sleep 1; done; systemctl status --no-pager " + UNIT,
    )
    assert waited.stdout.strip().endswith("back"), waited.stdout + waited.stderr
    assert vpn.lab.sh(CLIENT, "python3 -", stdin=FETCH).strip() == "behind-the-vpn"


def test_second_run_changes_nothing(vpn: Vpn, first_run: tuple) -> None:
    """Under Ansible's own strategy (the first run had Mitogen's), so both strategies run the role."""
    second = vpn.up("--strategy", "linear")
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout)[CLIENT]["changed"] == 0


def test_render_masks_the_keys_on_screen_and_writes_them_exactly(vpn: Vpn, first_run: tuple, tmp_path: Path) -> None:
    shown = vpn.lab.provision("render", "-i", str(vpn.inventory), "--host", CLIENT, check=True)
    vpn.outputs.append(shown.stdout + shown.stderr)
    assert "# ==> egress.conf <==" in shown.stdout and "masked on screen" in shown.stdout
    assert f"route 10.79.0.0 255.255.255.0\nroute-ipv6 {DESTINATIONS[1]}\n" in shown.stdout
    vpn.lab.provision("render", "-i", str(vpn.inventory), "--host", CLIENT, "--out", str(tmp_path), check=True)
    written = (tmp_path / "egress.conf").read_text()
    assert (vpn.pki / "client.key").read_text().strip() in written
    live = vpn.lab.sh(CLIENT, "sudo cat /etc/openvpn/client/egress.conf")
    assert live == written, "render --out differs from what the role wrote"
    assert vpn.lab.sh(CLIENT, "sudo stat -c '%a %U' /etc/openvpn/client/egress.conf").strip() == "600 root"


def test_no_key_in_output_or_artifacts(vpn: Vpn, first_run: tuple) -> None:
    _, artifacts = first_run
    assert artifacts.is_dir()
    for secret in vpn.secrets():
        for output in vpn.outputs:
            assert secret not in output
        for path in (p for p in artifacts.rglob("*") if p.is_file()):
            assert secret.encode() not in path.read_bytes(), f"a key is in {path}"
