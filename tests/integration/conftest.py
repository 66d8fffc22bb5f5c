"""Integration tests: real lab VMs (qemu), the real playbooks, checked with testinfra.

One lab of two VMs is started per test session and shared by every test; its state lives in a temporary
directory, apart from any lab the user runs, on ports of its own.  Image and template come from the cache
(~/.cache/provision/lab), built on first use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import yaml
from labtools import BASE_PORT, ROOT, Lab, our_qemu_pids


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("lab")
    state, inventory = base / "state", base / "inventory"
    inventory.mkdir()
    shutil.copytree(ROOT / "inventories" / "lab" / "group_vars", inventory / "group_vars")
    env = {**os.environ, "PROVISION_LAB_STATE": str(state)}
    lab = Lab(inventory=inventory, state=state, env=env)
    try:
        lab.provision(
            "lab", "up", "--hosts", "2", "--base-port", str(BASE_PORT), "--inventory-out", str(inventory / "hosts.yml"),
            check=True,
        )  # fmt: skip
        yield lab
    finally:
        lab.provision("lab", "down")
        leftover = our_qemu_pids(state)
        assert not leftover, f"lab down left qemu processes running: {leftover}"


@pytest.fixture(scope="session")
def converged(lab: Lab) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """`provision up` run twice on the fresh lab: (first run, second run)."""
    first = lab.provision("up", "-i", str(lab.inventory))
    second = lab.provision("up", "-i", str(lab.inventory))
    return first, second


@pytest.fixture(scope="session")
def docker_host(lab: Lab) -> str:
    """A lab VM of the docker flavor, started next to whatever the session lab already runs.

    `lab up --hosts N` keeps running hosts, so asking for one more than are running starts exactly one new VM,
    whatever other test modules added before (a selinux host, say).  The shared inventory lists it too.
    """
    hosts_file = lab.inventory / "hosts.yml"
    running = yaml.safe_load(hosts_file.read_text())["all"]["children"]["lab"]["hosts"]
    for name, hostvars in running.items():
        if hostvars.get("lab_flavor") == "docker":
            return str(name)
    lab.provision(
        "lab", "up", "--hosts", str(len(running) + 1), "--flavor", "docker", "--base-port", str(BASE_PORT),
        "--inventory-out", str(hosts_file), check=True,
    )  # fmt: skip
    now = yaml.safe_load(hosts_file.read_text())["all"]["children"]["lab"]["hosts"]
    (name,) = [n for n, v in now.items() if n not in running and v.get("lab_flavor") == "docker"]
    return str(name)
