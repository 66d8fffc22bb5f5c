"""The nvidia role's container toolkit on the docker-flavor host (the serving module's VM, after its tests).

NVIDIA's repositories are not reachable here, so a stand-in package named nvidia-container-toolkit (built by this
test with dpkg-deb; its /usr/bin/nvidia-container-runtime is a shell script that execs runc, which is all dockerd
needs to accept the runtime) is installed first and the role runs with nvidia_container_toolkit_add_repo false.
The runtime reaches daemon.json only through the container_runtime role's merge: a user's key stays, docker
restarts, `docker info` lists nvidia. A module of its own so that scripts/test.sh runs it in the lane that owns
the docker host.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labtools import Lab, inventory_with, recap

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
def toolkit_runs(lab: Lab, docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    work = tmp_path_factory.mktemp("toolkit")
    deb = base64.b64encode(_standin_deb(work).read_bytes()).decode()
    lab.sh(docker_host, f"echo {deb} | base64 -d > /tmp/standin.deb && sudo dpkg -i /tmp/standin.deb >/dev/null")
    user = {"log-opts": {"max-size": "10m"}}
    lab.sh(docker_host, f"sudo mkdir -p /etc/docker && echo '{json.dumps(user)}' | sudo tee /etc/docker/daemon.json")
    started = lab.sh(docker_host, "systemctl show -p ActiveEnterTimestampMonotonic --value docker").strip()
    inventory = inventory_with(
        lab, work, {docker_host: {"nvidia_container_toolkit": "always", "nvidia_container_toolkit_add_repo": False}}
    )
    (inventory / "serving.yml").write_text(
        yaml.safe_dump({"all": {"children": {"inference": {"hosts": {docker_host: None}}}}})
    )
    args = ("up", "-i", str(inventory), "--limit", docker_host, "--tags", "nvidia,container_runtime")
    first = lab.provision(*args)
    second = lab.provision(*args)
    yield docker_host, started, first, second
    # The last module on the docker host (test_5_serving, test_5a_monitoring, then this): idle with Docker and two
    # replicas it would take half a core from the modules that run after.
    lab.pause(docker_host)


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
