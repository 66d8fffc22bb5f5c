"""Integration tests: real lab VMs (qemu), the real playbooks, checked with testinfra.

One lab of two VMs is started per test session and shared by every test; its state lives in a temporary
directory, apart from any lab the user runs, on ports of its own.  Image and template come from the cache
(~/.cache/provision/lab), built on first use.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labtools import (
    BASE_PORT,
    CLIENT,
    DOCKER_HOST,
    PHASES,
    ROOT,
    SERVING_TAGS,
    SESSION_HOSTS,
    WATCHED,
    WEBHOOK,
    Lab,
    ServingRuns,
    add_host,
    phase,
    start_named,
)  # fmt: skip

from provision.lab import image

# The images the later modules start VMs of, in the order they need them. On a cold cache they are built in the
# background while the first modules run on the session lab (a build is mostly downloads and unpacking; the
# session's VMs mostly wait on their guests), instead of one after the other when each module starts.
LATER_IMAGES = {
    "test_4_security.py": ("oci",),
    "test_4b_selinux.py": ("selinux",),
    "test_5_serving.py": ("docker", "demo"),
    "test_5a_monitoring.py": ("docker", "demo"),
    "test_5c_rolling.py": ("docker", "demo"),
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
# starts the session lab (lab1, lab2) in this directory before either lane and stops it after both. Most modules
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
    """DOCKER_HOST, a lab VM of the docker flavor, started next to whatever the session lab already runs.

    Each module that starts VMs of its own flavor names them (labtools: lab3 oci, lab4 selinux, lab5 docker, lab6
    nvidia, lab7 the watched plain VM, lab8 and lab9 docker for test_5c_rolling), so the two lanes of
    scripts/test.sh never race for a name.  Only this host is added to the session inventory.
    """
    hosts_file = lab.inventory / "hosts.yml"
    running = yaml.safe_load(hosts_file.read_text())["all"]["children"]["lab"]["hosts"]
    if DOCKER_HOST in running:
        return DOCKER_HOST
    with phase("docker-flavor VM up (flavor built first on a cold cache)"):
        hostvars = start_named(lab, tmp_path_factory, DOCKER_HOST, "docker")
    assert hostvars["lab_flavor"] == "docker", f"{DOCKER_HOST} was already running, as {hostvars['lab_flavor']}"
    add_host(hosts_file, DOCKER_HOST, hostvars)
    return DOCKER_HOST


# --- The serving host (test_5_serving, then test_5a_monitoring, in lane B) --------------------------------------
# One inventory and one converge for both modules: the docker host serves two demo replicas behind nginx and is
# the monitoring host; it and WATCHED, a plain VM of its own, are monitored over the lab's private segment.

# The monitoring host's settings while test_5_serving runs. Scrapes are costly on an emulated guest (node
# exporter's answer takes ~1.5 s of its CPU there, ~1000 series from the systemd collector alone), and nothing
# reads them before test_5a_monitoring, which sets its own short intervals: once a minute meanwhile.
MONITORING_SETTINGS = {
    "monitoring_server_scrape_group": "monitored",  # not the session's lab1, lab2
    "monitoring_server_scrape_interval": "60s",
    "monitoring_server_evaluation_interval": "60s",
    # The gateway's metrics script (a Python run, seconds of an emulated guest's CPU) once at start, then every
    # 10 minutes instead of every 30 s: nothing reads its output in the serving tests.
    "monitoring_agent_gateway_metrics_interval": "10min",
    "monitoring_server_storage_path": "/srv/prometheus",
    "monitoring_server_alertmanager": True,
    "monitoring_server_alertmanager_webhook_url": WEBHOOK,
}


@pytest.fixture(scope="session")
def watched_host(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """WATCHED started: its inventory variables."""
    with phase("watched VM up (a plain one, for the monitoring host to scrape)"):
        return start_named(lab, tmp_path_factory, WATCHED, "plain")


@pytest.fixture(scope="session")
def serving(
    lab: Lab, docker_host: str, watched_host: dict, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """An inventory serving two demo replicas behind nginx on the docker host, the monitoring host of it and of
    WATCHED (which is in this inventory only); both export on their private address."""
    inventory = tmp_path_factory.mktemp("serving") / "inventory"
    shutil.copytree(lab.inventory, inventory)
    add_host(inventory / "hosts.yml", WATCHED, watched_host)
    settings_file = inventory / "group_vars" / "inference.yml"
    built = lab.provision("lab", "demo-image", "--vars-out", str(settings_file), check=True)
    assert "provision-demo:" in built.stdout
    settings = yaml.safe_load(settings_file.read_text())
    settings |= {"inference_replicas": 2, "inference_model_dir": "/srv/models/demo", "inference_restart_sec": 2}
    settings_file.write_text(yaml.safe_dump(settings))
    (inventory / "group_vars" / "monitoring.yml").write_text(yaml.safe_dump(MONITORING_SETTINGS))
    groups: dict = {name: {"hosts": {docker_host: None}} for name in ("inference", "gateway", "monitoring")}
    groups["monitored"] = {
        "hosts": {docker_host: None, WATCHED: None},
        "vars": {"monitoring_address": "{{ private_address }}"},  # the lab's address on its private segment
    }
    (inventory / "serving.yml").write_text(yaml.safe_dump({"all": {"children": groups}}))
    script = base64.b64encode((ROOT / "provision/smoke/llm_client.py").read_bytes()).decode()
    lab.sh(docker_host, f"echo {script} | base64 -d > {CLIENT}")
    return inventory, docker_host


@pytest.fixture(scope="session")
def serving_runs(lab: Lab, serving: tuple[Path, str]) -> ServingRuns:
    """Check mode on the fresh hosts, then `provision up` twice (SERVING_TAGS on the docker host and WATCHED)."""
    inventory, host = serving
    args = ("up", "-i", str(inventory), "--tags", SERVING_TAGS, "--limit", f"{host},{WATCHED}")
    check = lab.provision(*args, "--check")
    # The docker VM's flavor has the monitoring packages, disabled (image.MONITORING_PACKAGES); WATCHED has none.
    units = " ".join(image.MONITORING_PACKAGES)
    nothing_runs = (
        f"for u in {units}; do systemctl is-active --quiet $u && echo $u running; "
        "systemctl is-enabled --quiet $u 2>/dev/null && echo $u enabled; done; "
        "ls /etc/provision/*.args /etc/systemd/system/prometheus*.service.d /etc/systemd/system/inference-1.service"
        " 2>/dev/null; true"
    )
    nothing_installed = (
        f"for p in {units}; do dpkg-query -W -f '${{Status}}\\n' $p 2>/dev/null | grep -q 'install ok installed' "
        "&& echo $p installed; done; true"
    )
    before = lab.sh(host, nothing_runs) + lab.sh(WATCHED, nothing_runs) + lab.sh(WATCHED, nothing_installed)
    first = lab.provision(*args)
    second = lab.provision(*args)
    lab.pause(WATCHED)  # idle until test_5a_monitoring: its CPU is test_5_serving's meanwhile
    return ServingRuns(check, before, first, second)
