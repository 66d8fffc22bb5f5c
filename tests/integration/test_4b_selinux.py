"""The selinux role on a real SELinux host: lab4, of the "selinux" lab flavor.

Debian 12 with the reference policy, labelled when the image is built, booted permissive (Debian's default).
The test switches it to enforcing, shows nginx's upstream connection denied, then runs the selinux role
(selinux_state enforcing, httpd_can_network_connect, a port label, a file context) and checks that the
proxy works, the mode stays Enforcing and the boolean survives a reboot.  Runs after test_4_security.py,
which starts lab3, so lab4 is the next VM of the session lab.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from labtools import BASE_PORT, Lab, recap

# The session's VMs idle while this module works on its own: paused, they leave it their CPU.
pytestmark = pytest.mark.usefixtures("session_hosts_paused")

SE_HOST = "lab4"
UPSTREAM_PORT = 8000  # vLLM's usual port: soundd_port_t in the policy, so nginx may not connect to it by default
NGINX_SITE = f"""server {{
    listen 80 default_server;
    location / {{ proxy_pass http://127.0.0.1:{UPSTREAM_PORT}; }}
}}
"""
# The status nginx answers with (200 when it reached the upstream), or the error's last line.
PROXY_GET = (
    "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1/', timeout=10).status)\" 2>&1 | tail -1"
)


@dataclass(frozen=True)
class Lab4:
    lab: Lab
    inventory: Path

    def sh(self, command: str, stdin: str = "") -> str:
        return self.lab.sh(SE_HOST, command, stdin=stdin)

    def start_upstream(self) -> None:
        """The upstream started and listening (a Python's start takes seconds of a loaded emulated guest, and a
        request before it listens gets a 502 that is not SELinux's), then nginx restarted."""
        self.sh(f"sudo systemd-run --unit lab-upstream --quiet python3 -m http.server {UPSTREAM_PORT} --directory /tmp"
                f" 2>/dev/null; for i in $(seq 240); do (exec 3<>/dev/tcp/127.0.0.1/{UPSTREAM_PORT}) 2>/dev/null"
                " && break; sleep 0.5; done; sudo systemctl restart nginx")  # fmt: skip


@pytest.fixture(scope="module")
def lab4(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab4]:
    work = tmp_path_factory.mktemp("selinux")
    lab.provision(
        "lab", "up", "--name", SE_HOST, "--flavor", "selinux", "--base-port", str(BASE_PORT),
        "--inventory-out", str(work / "lab-hosts.yml"), check=True,
    )  # fmt: skip
    hosts = yaml.safe_load((work / "lab-hosts.yml").read_text())
    group = hosts["all"]["children"]["lab"]
    group["hosts"] = {SE_HOST: group["hosts"][SE_HOST]}
    inventory = work / "inventory" / "hosts.yml"
    (inventory.parent / "group_vars").mkdir(parents=True)
    inventory.write_text(yaml.safe_dump(hosts))
    config = {
        "selinux_state": "enforcing",
        "selinux_booleans": [{"name": "httpd_can_network_connect", "state": True}],
        "selinux_ports": [{"port": "8001", "setype": "http_port_t"}],
        "selinux_fcontexts": [{"path": "/srv/models", "setype": "httpd_sys_content_t"}],
    }
    (inventory.parent / "group_vars" / "all.yml").write_text(yaml.safe_dump(config))
    state = Lab4(lab, inventory)
    state.sh("sudo mkdir -p /srv/models && sudo tee /etc/nginx/sites-enabled/default >/dev/null", stdin=NGINX_SITE)
    yield state
    lab.pause(SE_HOST)  # not needed again


def test_selinux_role_fixes_the_upstream_denial_and_stays_enforcing(lab4: Lab4) -> None:
    assert lab4.sh("/usr/sbin/getenforce").strip() == "Permissive"
    assert "sshd_exec_t" in lab4.sh("ls -Z /usr/sbin/sshd"), "the image was not labelled at build time"
    # The policy state the role must change, as Debian ships it.
    assert "httpd_can_network_connect --> off" in lab4.sh("/usr/sbin/getsebool httpd_can_network_connect")
    assert "8001" not in lab4.sh("sudo semanage port -l | grep '^http_port_t'")
    assert "httpd_sys_content_t" not in lab4.sh("ls -dZ /srv/models")
    lab4.sh("sudo /usr/sbin/setenforce 1")
    lab4.start_upstream()
    # Debian's policy confines nginx, so the denial the blog posts answer with `setenforce 0` happens here.
    assert lab4.sh("ps -eZ | grep -w nginx | head -1").split(":")[2] == "httpd_t"
    assert "HTTP Error 502" in lab4.sh(PROXY_GET)
    denied = lab4.sh("sudo tail -1 /var/log/nginx/error.log")
    assert "failed (13: Permission denied) while connecting to upstream" in denied

    first = lab4.lab.provision("up", "-i", str(lab4.inventory), "--tags", "selinux")
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout)[SE_HOST]["changed"] > 0
    second = lab4.lab.provision("up", "-i", str(lab4.inventory), "--tags", "selinux")
    assert second.returncode == 0 and recap(second.stdout)[SE_HOST]["changed"] == 0, second.stdout

    assert lab4.sh("/usr/sbin/getenforce").strip() == "Enforcing"
    assert lab4.sh(PROXY_GET).strip() == "200"
    assert "httpd_can_network_connect --> on" in lab4.sh("/usr/sbin/getsebool httpd_can_network_connect")
    assert "8001" in lab4.sh("sudo semanage port -l | grep '^http_port_t'")
    assert "httpd_sys_content_t" in lab4.sh("ls -dZ /srv/models")

    lab4.lab.provision("lab", "restart", SE_HOST, check=True)
    assert lab4.sh("/usr/sbin/getenforce").strip() == "Enforcing"
    assert "httpd_can_network_connect --> on" in lab4.sh("/usr/sbin/getsebool httpd_can_network_connect")
    lab4.start_upstream()
    assert lab4.sh(PROXY_GET).strip() == "200"
    # sshd still runs and its config is valid under enforcing; its algorithm lists are not checked here (only the
    # selinux role ran on lab4, so they are the distribution's, which provision test rightly reports).
    checks = "selinux or sshd_running or sshd_config_valid"
    smoke = lab4.lab.provision("test", "-i", str(lab4.inventory), "-k", checks)
    assert smoke.returncode == 0 and "3 passed" in smoke.stdout, smoke.stdout
