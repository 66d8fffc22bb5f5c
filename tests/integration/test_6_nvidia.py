"""The nvidia role on lab VMs, which have no NVIDIA device.

- Every site-wide run takes the no-GPU path: one line, "no NVIDIA device", and nothing changed (the session's
  converged runs, whose second run test_1 already checks for changed=0).
- nvidia_required makes that a failure with that line; the two guards (Secure Boot on, no headers for the
  running kernel) stop a run with nvidia_install_without_gpu before it writes or installs anything. The lab has
  no UEFI and its mirror has headers for its kernel, so both are stood in for by __nvidia_probe_override (the
  role's test hook laid over what its probe found): Secure Boot on for one host, a kernel no mirror has headers
  for on the other, in one run.
- The container toolkit on the docker-flavor host: NVIDIA's repositories are not reachable here, so a stand-in
  package named nvidia-container-toolkit (built by this test with dpkg-deb; its /usr/bin/nvidia-container-runtime
  is a shell script that execs runc, which is all dockerd needs to accept the runtime) is installed first and the
  role runs with nvidia_container_toolkit_add_repo false. The runtime reaches daemon.json only through the
  container_runtime role's merge: a user's key stays, docker restarts, `docker info` lists nvidia.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from labtools import Lab, recap

Runs = tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]
NO_DEVICE = "nvidia : Find NVIDIA devices and a working driver: no NVIDIA device on the PCI bus"


def test_site_runs_leave_hosts_without_a_gpu_alone_in_one_line(converged: Runs) -> None:
    for run in converged:
        assert run.returncode == 0, run.stdout + run.stderr
        for host in ("lab1", "lab2"):
            lines = [line for line in run.stdout.splitlines() if f" {host} " in line and "nvidia :" in line]
            assert {line.split()[0] for line in lines} <= {"ok", "skipped"}, lines  # nothing changed or failed
            assert any(NO_DEVICE in line for line in lines), run.stdout


def _inventory_with(lab: Lab, tmp_path: Path, host_vars: dict[str, dict]) -> Path:
    inventory = tmp_path / "inventory"
    shutil.copytree(lab.inventory, inventory)
    for host, values in host_vars.items():
        (inventory / "host_vars").mkdir(exist_ok=True)
        (inventory / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(values))
    return inventory


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
    inventory = _inventory_with(
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


STANDIN_RUNTIME = (
    '#!/bin/sh\n# Lab stand-in for the NVIDIA container runtime: runs containers with runc.\nexec runc "$@"\n'
)


def _standin_deb(directory: Path) -> Path:
    root = directory / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: nvidia-container-toolkit\nVersion: 0.0~provision.lab\nArchitecture: all\nDepends: runc\n"
        "Maintainer: provision tests <tests@localhost>\n"
        "Description: lab stand-in for the NVIDIA container toolkit (NVIDIA's repositories are not reachable)\n"
    )
    (root / "usr" / "bin").mkdir(parents=True)
    runtime = root / "usr" / "bin" / "nvidia-container-runtime"
    runtime.write_text(STANDIN_RUNTIME)
    runtime.chmod(0o755)
    deb = directory / "nvidia-container-toolkit-standin.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture(scope="module")
def toolkit_runs(lab: Lab, docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    work = tmp_path_factory.mktemp("toolkit")
    deb = base64.b64encode(_standin_deb(work).read_bytes()).decode()
    lab.sh(docker_host, f"echo {deb} | base64 -d > /tmp/standin.deb && sudo dpkg -i /tmp/standin.deb >/dev/null")
    user = {"log-opts": {"max-size": "10m"}}
    lab.sh(docker_host, f"sudo mkdir -p /etc/docker && echo '{json.dumps(user)}' | sudo tee /etc/docker/daemon.json")
    started = lab.sh(docker_host, "systemctl show -p ActiveEnterTimestampMonotonic --value docker").strip()
    inventory = _inventory_with(
        lab, work, {docker_host: {"nvidia_container_toolkit": "always", "nvidia_container_toolkit_add_repo": False}}
    )
    (inventory / "serving.yml").write_text(
        yaml.safe_dump({"all": {"children": {"inference": {"hosts": {docker_host: None}}}}})
    )
    args = ("up", "-i", str(inventory), "--limit", docker_host, "--tags", "nvidia,container_runtime")
    first = lab.provision(*args)
    second = lab.provision(*args)
    return docker_host, started, first, second


def test_toolkit_runtime_is_merged_into_daemon_json_and_docker_lists_it(lab: Lab, toolkit_runs: tuple) -> None:
    host, started, first, second = toolkit_runs
    assert first.returncode == 0, first.stdout + first.stderr
    config = json.loads(lab.sh(host, "sudo cat /etc/docker/daemon.json"))
    assert config["log-opts"] == {"max-size": "10m"}, "the user's key was lost"
    assert config["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "args": []}
    now = lab.sh(host, "systemctl show -p ActiveEnterTimestampMonotonic --value docker").strip()
    assert now != started, "docker was not restarted with the new daemon.json"
    runtimes = lab.sh(host, "sudo docker info --format '{{json .Runtimes}}'")
    assert "nvidia" in json.loads(runtimes), runtimes
    assert second.returncode == 0 and recap(second.stdout)[host]["changed"] == 0, second.stdout
