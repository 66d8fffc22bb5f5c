"""What the integration tests share: the suite's ports and timed phases, provision's recap as numbers. The lab
itself (running provision as a user does, on VMs apart from the user's lab) is testkit.lab, shared with bench/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from provision.lab.qemu import qmp
from provision.smoke import llm_client
from testkit.lab import ROOT as ROOT
from testkit.lab import Lab as Lab

# Named phases of the suite (a VM start that may build an image first, ...) -> seconds; tests/conftest.py prints
# them at the end of the run.
PHASES: dict[str, float] = {}
BASE_PORT = 2311
SESSION_HOSTS = ("lab1", "lab2")  # the session lab (conftest.py); modules add lab3.. of other flavors
# The serving host's inventory (conftest.py's serving fixture), shared by test_5_serving and test_5a_monitoring.
DOCKER_HOST = "lab5"  # the docker-flavor VM (conftest.py's docker_host); lab3, lab4, lab6: test_4, test_4b, test_6b
# lab8, lab9: test_5c_rolling's docker-flavor VMs
WATCHED = "lab7"  # a plain VM the docker host's Prometheus scrapes
CLIENT = "/tmp/llm_client.py"  # where the serving fixture puts provision/smoke/llm_client.py on the docker host
SERVING_TAGS = "container_runtime,inference,nginx,monitoring"
# Seconds a replica gets to serve again after it was stopped, killed or restored: a container's start and health
# under the suite's load took over 60 s (s31), once 2 min from systemd's Started to the server's first line.
REPLICA_BACK = 240
WEBHOOK = "http://127.0.0.1:9099/alerts"  # test_5a_monitoring's receiver, on the docker host's loopback


@dataclass(frozen=True)
class ServingRuns:
    check: subprocess.CompletedProcess[str]
    before: str  # what of the serving and monitoring units existed before the first run (after check mode): none
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a named phase of the suite (summed when it repeats)."""
    started = time.monotonic()
    try:
        yield
    finally:
        PHASES[name] = PHASES.get(name, 0.0) + time.monotonic() - started


RECAP = re.compile(r"^(?P<host>\S+)\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)", re.M)  # fmt: skip


def recap(output: str) -> dict[str, dict[str, int]]:
    """The per-host recap `provision up` prints at the end, as numbers."""
    found = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"} for m in RECAP.finditer(output)}
    assert found, f"no recap in output:\n{output}"
    return found


def inventory_with(lab: Lab, tmp_path: Path, host_vars: dict[str, dict]) -> Path:
    """A copy of the lab's inventory with host_vars files for these hosts."""
    inventory = tmp_path / "inventory"
    shutil.copytree(lab.inventory, inventory)
    for host, values in host_vars.items():
        (inventory / "host_vars").mkdir(exist_ok=True)
        (inventory / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(values))
    return inventory


def start_named(lab: Lab, tmp_path_factory: pytest.TempPathFactory, name: str, flavor: str) -> dict:
    """Start the lab VM `name` of `flavor` (`lab up --name`; one already running is kept): its inventory variables."""
    started = tmp_path_factory.mktemp(name) / "lab-hosts.yml"
    lab.provision(
        "lab", "up", "--name", name, "--flavor", flavor, "--base-port", str(BASE_PORT),
        "--inventory-out", str(started), check=True,
    )  # fmt: skip
    return dict(yaml.safe_load(started.read_text())["all"]["children"]["lab"]["hosts"][name])


def add_host(hosts_file: Path, name: str, hostvars: dict) -> None:
    """Add a lab VM to an inventory's hosts.yml, keeping its header comments."""
    text = hosts_file.read_text()
    inventory = yaml.safe_load(text)
    inventory["all"]["children"]["lab"]["hosts"][name] = hostvars
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    hosts_file.write_text(header + yaml.safe_dump(inventory, sort_keys=False))


def client(lab: Lab, host: str, *args: str) -> dict:
    """llm_client's JSON answer, run on a lab host (CLIENT)."""
    return llm_client.answer(lab.sh(host, f"python3 {CLIENT} {' '.join(args)}"))


def local_client(*args: str, timeout: float = 300) -> dict:
    """llm_client's JSON answer, run here on the controller (towards a forwarded port): a client in a guest runs
    emulated, on the CPU the VMs under test and the other lane wait for."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "provision/smoke/llm_client.py"), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"llm_client {' '.join(args)}: exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    return llm_client.answer(proc.stdout)


def forward_port(lab: Lab, host: str, port: int, guest_port: int) -> None:
    """Forward 127.0.0.1:port here to guest_port on a lab VM (qemu user networking, added to the running VM; one
    this port had is replaced): connections arrive on the VM's NIC from 10.0.2.2, so its INPUT rules apply."""
    with qmp(lab.state / "hosts" / host / "qmp.sock") as monitor:
        monitor.call("human-monitor-command", **{"command-line": f"hostfwd_remove tcp:127.0.0.1:{port}"})
        reply = monitor.call(
            "human-monitor-command", **{"command-line": f"hostfwd_add tcp:127.0.0.1:{port}-:{guest_port}"}
        )
    assert not str(reply).strip(), f"{host}: hostfwd_add {port}-:{guest_port}: {reply}"
