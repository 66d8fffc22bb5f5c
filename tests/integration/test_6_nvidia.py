"""The nvidia role on lab VMs, which have no NVIDIA device.

- Every site-wide run takes the no-GPU path: one line, "no NVIDIA device", and nothing changed (the session's
  converged runs, whose second run test_1 already checks for changed=0).
- nvidia_required makes that a failure with that line; the two guards (Secure Boot on, no headers for the
  running kernel) stop a run with nvidia_install_without_gpu before it writes or installs anything. The lab has
  no UEFI and its mirror has headers for its kernel, so both are stood in for by __nvidia_probe_override (the
  role's test hook laid over what its probe found): Secure Boot on for one host, a kernel no mirror has headers
  for on the other, in one run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from labtools import Lab, inventory_with, recap

Runs = tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]
NO_DEVICE = "nvidia : Find NVIDIA devices and a working driver: no NVIDIA device on the PCI bus"


def test_site_runs_leave_hosts_without_a_gpu_alone_in_one_line(converged: Runs) -> None:
    for run in converged:
        assert run.returncode == 0, run.stdout + run.stderr
        for host in ("lab1", "lab2"):
            lines = [line for line in run.stdout.splitlines() if f" {host} " in line and "nvidia :" in line]
            assert {line.split()[0] for line in lines} <= {"ok", "skipped"}, lines  # nothing changed or failed
            assert any(NO_DEVICE in line for line in lines), run.stdout


def test_nvidia_required_fails_a_host_without_a_gpu(lab: Lab, converged: Runs) -> None:
    proc = lab.provision(
        "up", "-i", str(lab.inventory), "--limit", "lab1", "--tags", "nvidia", "-e", "nvidia_required=true"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no NVIDIA device on the PCI bus of lab1, and nvidia_required is true" in proc.stdout
    assert recap(proc.stdout)["lab1"]["failed"] == 1


def test_guards_stop_before_anything_is_written(lab: Lab, converged: Runs, tmp_path: Path) -> None:
    kernel = lab.sh("lab2", "uname -r").strip()
    assert lab.ssh("lab2", f"apt-cache policy linux-headers-{kernel} | grep -q 'Candidate: [0-9]'").returncode == 0, (
        f"the lab mirror has no linux-headers-{kernel}: rebuild the lab image"
    )
    inventory = inventory_with(
        lab,
        tmp_path,
        {
            "lab1": {"nvidia_install_without_gpu": True, "__nvidia_probe_override": {"secure_boot": True}},
            "lab2": {"nvidia_install_without_gpu": True, "__nvidia_probe_override": {"kernel": "6.1.0-999-amd64"}},
        },
    )
    proc = lab.provision("up", "-i", str(inventory), "--tags", "nvidia", "--limit", "lab1,lab2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Secure Boot is enabled on lab1" in proc.stdout and "nothing was installed" in proc.stdout
    assert "no package linux-headers-6.1.0-999-amd64 in the repositories configured on lab2" in proc.stdout
    assert "the running kernel 6.1.0-999-amd64" in proc.stdout
    for host, stats in recap(proc.stdout).items():
        assert stats["changed"] == 0 and stats["failed"] == 1, host
        left = lab.sh(
            host, "ls /etc/apt/sources.list.d /etc/modprobe.d; dpkg-query -W 'nvidia*' 'linux-headers*' 2>&1; true"
        )
        assert "nvidia" not in left.replace("no packages found matching nvidia*", ""), left
