"""`provision lab up` + `provision up` + `provision test`, as a user runs them, on two real lab VMs."""

from __future__ import annotations

import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from labtools import Lab, recap

Runs = tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]


def test_first_up_converges_every_host(converged: Runs) -> None:
    first, _ = converged
    assert first.returncode == 0, first.stdout + first.stderr
    stats = recap(first.stdout)
    assert set(stats) == {"lab1", "lab2"}
    for host, s in stats.items():
        assert s["failed"] == 0 and s["unreachable"] == 0, host
        assert s["changed"] > 0, f"{host}: a fresh host must need changes (mirror, packages)"
    # One line per task and host while it runs.
    assert any(line.split()[:2] == ["changed", "lab1"] for line in first.stdout.splitlines()), first.stdout


def test_second_up_changes_nothing(converged: Runs) -> None:
    _, second = converged
    assert second.returncode == 0, second.stdout + second.stderr
    for host, s in recap(second.stdout).items():
        assert s == {"ok": s["ok"], "changed": 0, "unreachable": 0, "failed": 0}, host


def test_check_mode_on_converged_hosts_reports_no_change(lab: Lab, converged: Runs) -> None:
    proc = lab.provision("up", "-i", str(lab.inventory), "--check", "--diff")
    assert proc.returncode == 0
    assert all(s["changed"] == 0 for s in recap(proc.stdout).values())


def test_smoke_suite_passes_with_junit(lab: Lab, converged: Runs, tmp_path: Path) -> None:
    junit = tmp_path / "smoke.xml"
    proc = lab.provision("test", "-i", str(lab.inventory), "--junit", str(junit))
    assert proc.returncode == 0, proc.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("tests", 0)) >= 6  # three checks on each of two hosts
    assert suite.get("failures") == "0" and suite.get("errors") == "0" and suite.get("skipped") == "0"


def test_packages_came_through_the_configured_mirror(lab: Lab, converged: Runs) -> None:
    proc = lab.ssh("lab1", "ls /var/lib/apt/lists")
    assert proc.returncode == 0
    assert "10.0.2.2:3142_deb.debian.org_debian_dists_bookworm_InRelease" in proc.stdout.split()


def test_clones_do_not_share_identity(lab: Lab) -> None:
    seen = {}
    for host in ("lab1", "lab2"):
        proc = lab.ssh(
            host, "hostname; cat /etc/machine-id; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub; date +%s"
        )
        assert proc.returncode == 0, proc.stderr
        name, machine_id, fingerprint, clock = proc.stdout.split("\n")[:4]
        assert name == host
        assert abs(int(clock) - time.time()) < 120, f"{host}: clock not reset after resume"
        seen[host] = (machine_id, fingerprint)
    assert seen["lab1"][0] != seen["lab2"][0], "machine-id shared"
    assert seen["lab1"][1] != seen["lab2"][1], "SSH host key shared"


def test_data_disk_is_present_and_blank(lab: Lab) -> None:
    proc = lab.ssh("lab1", "lsblk -dno SIZE /dev/vdb; sudo blkid -p /dev/vdb; echo rc=$?")
    assert proc.stdout.split()[0] == "20G"
    assert "rc=2" in proc.stdout  # blkid: nothing found


def test_lab_status_lists_running_hosts(lab: Lab) -> None:
    """lab1 and lab2 are listed running, each with the pid of its own qemu (other modules' VMs of the same lab,
    running in the other lane of scripts/test.sh, are listed too, and checked alike)."""
    proc = lab.provision("lab", "status")
    assert proc.returncode == 0
    running = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        if "running" in fields:
            running[fields[0]] = int(fields[fields.index("pid") + 1])
    assert {"lab1", "lab2"} <= set(running), proc.stdout
    for name, pid in running.items():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"-name") + 1] == name.encode(), f"{name}: pid {pid} is not its qemu"


def test_drift_is_caught_by_smoke_suite_and_repaired_by_up(lab: Lab, converged: Runs) -> None:
    broken = lab.ssh("lab2", "sudo sed -i 's#10.0.2.2:3142#192.0.2.1#' /etc/apt/sources.list.d/provision.sources")
    assert broken.returncode == 0
    failed = lab.provision("test", "-i", str(lab.inventory), "--limit", "lab2")
    assert failed.returncode == 1, failed.stdout
    assert "mirror" in failed.stdout
    repaired = lab.provision("up", "-i", str(lab.inventory), "--limit", "lab2", "--tags", "base")  # the mirror's role
    assert repaired.returncode == 0
    assert recap(repaired.stdout)["lab2"]["changed"] >= 1
    assert lab.provision("test", "-i", str(lab.inventory), "--limit", "lab2").returncode == 0
