"""The tunnel role on the session lab: lab1 keeps an SSH tunnel to lab2 open as a systemd unit.

lab1 reaches lab2's sshd host to host, over the lab's private network: lab2's private_address is its
tunnel_ssh_address, one host variable. After lab1's cold reboot the tunnel comes back over it too.
A web server on lab2's loopback stands for the service on the other VM; lab1 reaches it through a local forward,
and lab2 reaches lab1's sshd through a remote forward. No VM of its own: lab1 and lab2 are the session's.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import Lab, inventory_with, phase, recap

NEAR, FAR = "lab1", "lab2"
WEB_PORT, LOCAL_PORT, REMOTE_PORT, WRONG_PORT = 18080, 18000, 18022, 18010
UNIT = "tunnel-web.service"
WEB = f"python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:{LOCAL_PORT}/\").read().decode())'"
# The far end as lab1 sees it: lab2's sshd on the private segment (templated in lab2's own variables).
FAR_VARS = {"tunnel_ssh_address": "{{ private_address }}", "tunnel_ssh_port": 22}
FORWARD = {
    "name": "web",
    "host": FAR,
    "local": [{"listen": str(LOCAL_PORT), "to": f"127.0.0.1:{WEB_PORT}"}],
    "remote": [{"listen": f"127.0.0.1:{REMOTE_PORT}", "to": "127.0.0.1:22"}],
}


class Tunnels:
    def __init__(self, lab: Lab, root: Path) -> None:
        self.lab, self.root = lab, root

    def inventory(self, *forwards: dict) -> Path:
        directory = self.root / f"inventory-{len(list(self.root.iterdir()))}"
        directory.mkdir()
        return inventory_with(self.lab, directory, {NEAR: {"tunnel_forwards": list(forwards)}, FAR: FAR_VARS})

    def up(self, inventory: Path, *more: str) -> tuple[int, str]:
        with phase("test_8: provision up --tags tunnel"):
            proc = self.lab.provision("up", "-i", str(inventory), "--tags", "tunnel", "--limit", NEAR, *more)
        return proc.returncode, proc.stdout + proc.stderr

    def state(self, unit: str = UNIT) -> dict[str, str]:
        shown = self.lab.sh(NEAR, f"systemctl show --property ActiveState,Result,NRestarts,MainPID {unit}")
        return dict(line.split("=", 1) for line in shown.split())

    def wait(self, host: str, condition: str) -> None:
        """Until a shell condition holds on the host (three minutes at most, then the test fails)."""
        self.lab.sh(host, f"timeout 180 sh -c 'until {condition}; do sleep 1; done'")


@pytest.fixture(scope="module")
def tunnels(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnels]:
    tunnels = Tunnels(lab, tmp_path_factory.mktemp("tunnel"))
    lab.sh(FAR, f"mkdir -p /tmp/tunnel-web && echo served by {FAR} > /tmp/tunnel-web/index.html")
    lab.ssh(FAR, "sudo systemctl stop tunnel-test-web")  # one left by a run that was cut short
    lab.sh(FAR, f"sudo systemd-run --unit tunnel-test-web python3 -m http.server {WEB_PORT} --bind 127.0.0.1 "
                "--directory /tmp/tunnel-web")  # fmt: skip
    try:
        yield tunnels
    finally:  # no tunnel left behind for the modules after this one (the role removes the units it no longer has)
        tunnels.up(tunnels.inventory())
        lab.ssh(FAR, "sudo systemctl stop tunnel-test-web")


def test_check_mode_on_a_fresh_host_changes_nothing(tunnels: Tunnels) -> None:
    look = "ls /etc/systemd/system/tunnel-* 2>&1; getent passwd provision-tunnel; ls /var/lib/provision-tunnel 2>&1"
    before = {host: tunnels.lab.ssh(host, look).stdout for host in (NEAR, FAR)}
    code, output = tunnels.up(tunnels.inventory(FORWARD), "--check")
    assert code == 0, output
    assert recap(output)[NEAR]["changed"] > 0
    assert {host: tunnels.lab.ssh(host, look).stdout for host in (NEAR, FAR)} == before


def test_the_tunnel_forwards_both_ways_and_a_second_run_changes_nothing(tunnels: Tunnels) -> None:
    inventory = tunnels.inventory(FORWARD)
    code, output = tunnels.up(inventory, "--keep-artifacts")
    artifacts = Path(re.search(r"artifacts kept in (\S+)", output)[1])
    try:
        assert code == 0, output
        assert recap(output)[NEAR]["changed"] > 0
        assert tunnels.lab.sh(NEAR, WEB).strip() == f"served by {FAR}"
        banner = f"python3 -c 'import socket; print(socket.create_connection((\"127.0.0.1\", {REMOTE_PORT})).recv(64))'"
        assert "SSH-2.0-OpenSSH" in tunnels.lab.sh(FAR, banner)
        # The far end: the key, restricted to these forwards; the near end: the far end's host key pinned.
        authorized = tunnels.lab.sh(FAR, "sudo cat /var/lib/provision-tunnel/.ssh/authorized_keys")
        assert authorized.startswith(
            f'restrict,port-forwarding,command="/bin/false",permitopen="127.0.0.1:{WEB_PORT}",'
            f'permitlisten="127.0.0.1:{REMOTE_PORT}" ssh-ed25519 '
        ), authorized
        pinned = tunnels.lab.sh(NEAR, "sudo cat /var/lib/provision-tunnel/.ssh/known_hosts.d/web").split()
        assert pinned == [FAR, *tunnels.lab.sh(FAR, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2]]
        # The private key stays on the host: not in the output, not in the artifacts.
        key = "".join(tunnels.lab.sh(NEAR, "sudo cat /var/lib/provision-tunnel/.ssh/id_ed25519").splitlines()[1:-1])
        assert key[:40] not in output
        for path in artifacts.rglob("*"):
            assert not path.is_file() or key[:40] not in path.read_text(errors="replace"), path

        # Again, with Ansible's own strategy (the first run had Mitogen's): nothing to change.
        code, again = tunnels.up(inventory, "--strategy", "linear")
        assert code == 0 and recap(again)[NEAR]["changed"] == 0, again
        smoke = tunnels.lab.provision("test", "-i", str(inventory), "--limit", NEAR, "-k", "tunnel")
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)


def test_ssh_killed_is_started_again_by_systemd(tunnels: Tunnels) -> None:
    before = tunnels.state()
    assert before["ActiveState"] == "active" and before["MainPID"] != "0", before  # systemd knows ssh's pid
    tunnels.lab.sh(NEAR, f"sudo kill -9 {before['MainPID']}")
    restarts = int(before["NRestarts"]) + 1
    tunnels.wait(NEAR, f'[ "$(systemctl show --property NRestarts --value {UNIT})" -ge {restarts} ] && '
                       f"systemctl is-active --quiet {UNIT}")  # fmt: skip
    after = tunnels.state()
    assert after["MainPID"] != before["MainPID"]
    assert tunnels.lab.sh(NEAR, WEB).strip() == f"served by {FAR}"


def test_the_tunnel_is_up_after_a_reboot(tunnels: Tunnels) -> None:
    with phase("test_8: lab restart lab1"):
        tunnels.lab.provision("lab", "restart", NEAR, check=True)
    tunnels.wait(NEAR, f"systemctl is-active --quiet {UNIT}")
    assert tunnels.lab.sh(NEAR, WEB).strip() == f"served by {FAR}"


def test_a_wrong_host_key_never_connects_and_the_unit_ends_failed(tunnels: Tunnels) -> None:
    wrong_key = tunnels.lab.sh(NEAR, "cat /etc/ssh/ssh_host_ed25519_key.pub").strip()  # lab1's, not lab2's
    wrong = {"name": "wrongkey", "host": FAR, "host_key": wrong_key,
             "local": [{"listen": str(WRONG_PORT), "to": f"127.0.0.1:{WEB_PORT}"}]}  # fmt: skip
    inventory = tunnels.inventory(FORWARD, wrong)
    code, output = tunnels.up(inventory)
    assert code == 1, output
    assert "tunnel-wrongkey.service on lab1 did not connect" in output, output
    assert "Host key verification failed" in output, output
    # Not an endless quiet loop: systemd gives up after its start limit, and says so.
    tunnels.wait(NEAR, '[ "$(systemctl show --property ActiveState --value tunnel-wrongkey.service)" = failed ]')
    # systemd keeps the first failure's Result (exit-code) when the start limit ends the restarts, and logs why.
    state = tunnels.state("tunnel-wrongkey.service")
    assert state["ActiveState"] == "failed" and int(state["NRestarts"]) >= 4, state
    log = tunnels.lab.sh(NEAR, "sudo journalctl --unit tunnel-wrongkey.service --no-pager --output cat")
    assert "Start request repeated too quickly" in log, log
    assert "Host key verification failed" in log and "Authenticated" not in log
    smoke = tunnels.lab.provision("test", "-i", str(inventory), "--limit", NEAR, "-k", "tunnel")
    assert smoke.returncode == 1, smoke.stdout + smoke.stderr
    assert "tunnel-wrongkey.service is failed (failed, systemd gave up: start limit hit, " in smoke.stdout
    assert "ssh said: Host key verification failed." in smoke.stdout
    assert UNIT not in smoke.stdout  # the good tunnel is not reported
    assert tunnels.lab.sh(NEAR, WEB).strip() == f"served by {FAR}"
    # Taken out of the inventory, the unit is removed.
    code, output = tunnels.up(tunnels.inventory(FORWARD))
    assert code == 0, output
    assert tunnels.lab.ssh(NEAR, "test -e /etc/systemd/system/tunnel-wrongkey.service").returncode == 1
    assert tunnels.state()["ActiveState"] == "active"
