"""Integration tests: real lab VMs (qemu), the real playbooks, checked with testinfra.

One lab of two VMs is started per test session and shared by every test; its state lives in a temporary
directory, apart from any lab the user runs, on ports of its own.  Image and template come from the cache
(~/.cache/provision/lab), built on first use.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labtools import BASE_PORT, PHASES, SESSION_HOSTS, Lab, phase

# The images the later modules start VMs of, in the order they need them. On a cold cache they are built in the
# background while the first modules run on the session lab (a build is mostly downloads and unpacking; the
# session's VMs mostly wait on their guests), instead of one after the other when each module starts.
LATER_IMAGES = {
    "test_4_security.py": ("oci",),
    "test_4b_selinux.py": ("selinux",),
    "test_5_serving.py": ("docker", "demo"),
    "test_8_monitoring.py": ("docker", "demo"),
    "test_6b_nvidia_driver.py": ("nvidia",),
}
_wanted_images: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)
    modules = {Path(str(item.fspath)).name for item in items}
    for module, images in LATER_IMAGES.items():
        if module in modules:
            _wanted_images.extend(images)


def _prebuild(images: list[str]) -> None:
    from provision.lab import dirs
    from provision.lab.demo_image import ensure_demo_image
    from provision.lab.image import ensure_base_image

    cache = dirs().cache
    for name in images:
        with phase(f"background build of the {name} image (cold cache only)"):
            try:
                if name == "demo":
                    ensure_demo_image(cache, log=lambda text: None)
                else:
                    ensure_base_image(cache, log=lambda text: None, flavor=name)
            except Exception as exc:  # the module that needs it builds it again, and fails with the reason
                PHASES[f"background build of the {name} image failed: {exc}"] = 0.0


# scripts/test.sh runs the integration modules in two lanes, two pytest processes side by side on one lab: it
# starts the session lab (lab1, lab2) in this directory before either lane and stops it after both. The modules
# that work on VMs of their own flavors (lab3..) run in the second lane, while the first works on lab1 and lab2:
# a module mostly waits on one guest, and two such waits share the machine's two cores. Unset (a developer
# running a module or two), the session starts and stops its own lab, and those modules pause lab1 and lab2.
SHARED_LAB = os.environ.get("PROVISION_TEST_SHARED_LAB", "")


def _start_builder() -> threading.Thread:
    builder = threading.Thread(target=_prebuild, args=(_wanted_images,), name="prebuild", daemon=True)
    builder.start()
    return builder


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("lab")
    inventory = base / "inventory"
    if SHARED_LAB:  # the lane's own copy of the inventory: a module that adds a host adds it for this lane only
        state = Path(SHARED_LAB) / "state"
        shutil.copytree(Path(SHARED_LAB) / "inventory", inventory)
        builder = _start_builder()
        try:
            yield Lab(inventory=inventory, state=state, env={**os.environ, "PROVISION_LAB_STATE": str(state)})
        finally:
            builder.join()
        return
    lab = Lab.under(base)
    builder = _start_builder()
    try:
        with phase("session lab up (image and template built first on a cold cache)"):
            lab.up(len(SESSION_HOSTS), BASE_PORT)
        yield lab
    finally:
        builder.join()  # never leave a build half done (its temporary directory in the cache)
        lab.down()


@pytest.fixture(scope="module")
def session_hosts_paused(lab: Lab) -> Iterator[None]:
    """For a module that works on hosts of its own: the session's VMs are paused meanwhile (unless the other
    lane is working on them)."""
    if SHARED_LAB:
        yield
        return
    lab.pause(*SESSION_HOSTS)
    try:
        yield
    finally:
        lab.resume(*SESSION_HOSTS)


@pytest.fixture(scope="session")
def converged(lab: Lab) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """`provision up` run twice on the fresh lab: (first run, second run)."""
    first = lab.provision("up", "-i", str(lab.inventory))
    second = lab.provision("up", "-i", str(lab.inventory))
    return first, second


@pytest.fixture(scope="session")
def docker_host(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lab VM of the docker flavor, started next to whatever the session lab already runs.

    Other modules start hosts of their own flavors (test_4: lab3, oci; test_4b: lab4, selinux) and keep them out
    of the session inventory, so the next free name comes from `lab status`, not from that inventory.  `lab up
    --hosts N` keeps running hosts and starts the missing ones of lab1..labN: N one past the highest lab host
    starts exactly one new VM.  Only that host is added to the session inventory.
    """
    hosts_file = lab.inventory / "hosts.yml"
    text = hosts_file.read_text()
    inventory = yaml.safe_load(text)
    running = inventory["all"]["children"]["lab"]["hosts"]
    for name, hostvars in running.items():
        if hostvars.get("lab_flavor") == "docker":
            return str(name)
    listed = lab.provision("lab", "status", check=True).stdout
    index = max(int(n) for n in re.findall(r"^lab(\d+)\s", listed, re.M)) + 1
    name = f"lab{index}"
    started = tmp_path_factory.mktemp("docker") / "lab-hosts.yml"
    with phase("docker-flavor VM up (flavor built first on a cold cache)"):
        lab.provision(
            "lab", "up", "--hosts", str(index), "--flavor", "docker", "--base-port", str(BASE_PORT),
            "--inventory-out", str(started), check=True,
        )  # fmt: skip
    hostvars = yaml.safe_load(started.read_text())["all"]["children"]["lab"]["hosts"][name]
    assert hostvars["lab_flavor"] == "docker", f"{name} was already running, as {hostvars['lab_flavor']}"
    running[name] = hostvars
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    hosts_file.write_text(header + yaml.safe_dump(inventory, sort_keys=False))
    return name
