"""`provision doctor` on the session lab's two hosts (no GPU, TCG): what it reports, and that it changes nothing.

It runs after the other modules, on the converged session hosts; it starts no VM of its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from labtools import SESSION_HOSTS, Lab, phase

# What must be the same before and after: every file under /etc, the package database, every unit's state
# (but for timers and the services they start, such as apt-daily, which may run at any moment on their own).
SNAPSHOT = (
    "sudo find /etc -xdev -type f -print0 | sudo xargs -0 sha256sum | sort; "
    "sha256sum /var/lib/dpkg/status; dpkg -l | sha256sum; "
    "timed=$(systemctl list-timers --all --no-legend | awk '{print $(NF-1); print $NF}' | sort -u | paste -sd'|'); "
    'systemctl list-units --all --no-legend --plain | grep -vE "^(${timed:-^}) " | sort'
)


UPSTREAMS = (22, 9)  # on lab2: its sshd, and a port nothing listens on


def snapshot(lab: Lab) -> dict[str, str]:
    return {host: lab.sh(host, SNAPSHOT) for host in SESSION_HOSTS}


class Doctored:
    def __init__(self, lab: Lab, converged: tuple, tmp_path: Path) -> None:
        self.before = snapshot(lab)
        # Other modules add hosts of their own flavors to the session inventory (test_5's docker host).
        limit = ("--limit", ",".join(SESSION_HOSTS))
        with phase("provision doctor on the 2 session hosts"):
            self.table = lab.provision("doctor", "-i", str(lab.inventory), *limit)
        self.json = lab.provision("doctor", "-i", str(lab.inventory), "--json", *limit)
        # The same hosts, put in the inference group and told to serve on GPUs.
        inventory = tmp_path / "inventory"
        shutil.copytree(lab.inventory, inventory)
        groups = {"all": {"children": {"inference": {"hosts": dict.fromkeys(SESSION_HOSTS)}}}}
        (inventory / "serving.yml").write_text(yaml.safe_dump(groups))
        # lab1 as a relay too, whose upstreams are lab2's sshd (answers) and a closed port (needs a way out).
        peer = yaml.safe_load((lab.inventory / "hosts.yml").read_text())["all"]["children"]["lab"]["hosts"]["lab2"]
        routes = [{"path": f"/{port}/", "upstream": f"https://{peer['private_address']}:{port}/"} for port in UPSTREAMS]
        relay = {"hosts": {"lab1": {"nginx_preset": "relay", "nginx_relay_routes": routes}}}
        (inventory / "relay.yml").write_text(yaml.safe_dump({"all": {"children": {"gateway": relay}}}))
        self.gpu = lab.provision("doctor", "-i", str(inventory), "-e", "inference_gpus=true", *limit)
        self.after = snapshot(lab)
        self.flags = {
            host: sorted(set(lab.sh(host, "grep -owE 'vmx|svm' /proc/cpuinfo || true").split()))
            for host in SESSION_HOSTS
        }


@pytest.fixture(scope="module")
def doctored(lab: Lab, converged: tuple, tmp_path_factory: pytest.TempPathFactory) -> Doctored:
    return Doctored(lab, converged, tmp_path_factory.mktemp("doctor"))


def test_the_table_reports_no_gpu_the_cloud_and_the_cpu_flags(doctored: Doctored) -> None:
    proc = doctored.table
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the session hosts do not serve: nothing blocks
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header == ["HOST", "CLOUD", "VIRT", "GPUS", "DRIVER", "CUDA", "REBOOT", "SECBOOT", "DOCKER", "SELINUX",
                      "VERDICT"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip() and ":" not in line}
    assert set(rows) == set(SESSION_HOSTS), proc.stdout
    for host, cells in rows.items():
        virt = " ".join(doctored.flags[host]) or "absent"
        # The lab boots without UEFI, with no SELinux, no docker on the plain flavor, no NVIDIA device.
        assert " ".join(cells) == f"{host} other {virt} 0/- - - no no UEFI absent absent ok", proc.stdout
        assert all(len(line) <= 100 for line in lines[:3])


def test_json_holds_every_reading(doctored: Doctored) -> None:
    assert doctored.json.returncode == 0, doctored.json.stderr
    reports = {report["host"]: report for report in json.loads(doctored.json.stdout)}
    assert set(reports) == set(SESSION_HOSTS)
    for host, report in reports.items():
        readings = report["readings"]
        assert report["cloud"] == "other" and report["blocks"] == []
        assert readings["pci"] == {"visible": True, "nvidia": []}
        assert readings["driver"]["nvml"] == {"loaded": False} and readings["driver"]["proc_version"] == ""
        assert [flag for flag in ("vmx", "svm") if readings["cpu"][flag]] == doctored.flags[host]
        assert readings["secure_boot"] == "no UEFI" and readings["selinux"] == "absent"
        assert readings["docker"] == {"present": False} and readings["nouveau"] is False
        assert readings["model_dir"]["path"] == "/srv/models" and readings["model_dir"]["free"] > 0


def test_serving_on_gpus_that_are_not_there_blocks_naming_host_and_reason(doctored: Doctored) -> None:
    proc = doctored.gpu
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for host in SESSION_HOSTS:
        assert (
            f"provision: {host}: cannot serve: inference_gpus is true but no NVIDIA driver is loaded "
            "(none on the PCI bus)\n" in proc.stderr
        )
        assert f"provision: {host}: cannot serve: docker is not installed" in proc.stderr
        assert any(line.split()[0] == host and line.split()[-1] == "blocked" for line in proc.stdout.splitlines())


# A unit caught between two states by its own doing (a dbus-activated daemon exiting when idle) is no change.
TRANSITIONAL = {"activating", "deactivating", "reloading", "refreshing"}
LOAD_STATES = {"loaded", "not-found", "masked", "error", "bad-setting", "stub", "merged"}


def split(snapshot: str) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """A snapshot as its units (name -> load, active, sub) and its other lines. `systemctl list-units --plain`
    pads its columns to the longest value present, so one unit's state would change every line's spacing."""
    units, rest = {}, []
    for line in snapshot.splitlines():
        fields = line.split(None, 4)
        if len(fields) >= 4 and fields[1] in LOAD_STATES:
            units[fields[0]] = tuple(fields[1:4])
        else:
            rest.append(line)
    return units, rest


def test_doctor_changed_nothing(doctored: Doctored) -> None:
    for host in SESSION_HOSTS:
        (was, before), (now, after) = split(doctored.before[host]), split(doctored.after[host])
        assert was and before, f"{host}: the snapshot holds no units or no files"
        assert before == after, f"{host}: {sorted(set(before) ^ set(after))[:20]}"
        moved = {
            unit: (was.get(unit), now.get(unit))
            for unit in sorted(set(was) | set(now))
            if was.get(unit) != now.get(unit)
            and not TRANSITIONAL & {state[1] for state in (was.get(unit), now.get(unit)) if state}
        }
        assert not moved, f"{host}: units whose state changed: {moved}"


def test_the_relay_upstreams_are_tried_from_the_host(doctored: Doctored) -> None:
    said = doctored.gpu.stdout
    assert "lab1: upstream 10.77.0.2:22 (relay /22/) answers directly" in said, said
    assert "lab1: warning: upstream 10.77.0.2:9 (relay /9/) does not answer directly (Connection refused)" in said
