"""A rolling image change across three lab hosts behind one gateway, while a client streams through it.

The docker-flavor serving host (DOCKER_HOST, after test_5_serving, test_5a_monitoring and test_5b_nvidia_toolkit)
is the gateway, with a replica of its own, and two more docker-flavor VMs (ROLLED) serve one replica each on their
address on the lab's private segment, where the gateway's nginx reaches them (nginx_upstream_group). Through a
port forwarded to the gateway's nginx, one client sends non-streamed completions and another streams, in rounds,
the whole time (on the controller: the clients' own work stays off the emulated guests).
`provision up --batch 1` then rolls a new image over the three hosts: the batches go one after another (the
notes' timestamps, and where each host's new container started), no non-streamed request is lost and every stream
ends. A second image that never gets healthy stops the run after its first batch: that host is rolled back and
stays drained, the other two are untouched and serve every request, and the command the report gives rejoins it.

The images are the demo server's rootfs imported under new tags with one more Dockerfile line each (an ENV): a new
image id each, nothing to build. The rolling runs converge the two roles an image change concerns
(container_runtime, inference); the gateways' nginx runs are the rolling run's own.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from pathlib import Path

import pytest
import yaml
from labtools import (
    BASE_PORT,
    DOCKER_HOST,
    Lab,
    ServingRuns,
    add_host,
    forward_port,
    local_client,
    phase,
    recap,
    start_named,
)

from provision.lab.state import private_address

ROLLED = ("lab8", "lab9")  # docker-flavor VMs of this module (labtools: the names of the other modules' VMs)
HOSTS = (DOCKER_HOST, *ROLLED)  # the batches, in the inventory's order
TAGS = "container_runtime,inference,nginx"  # the set-up: replicas, and the gateway's upstream
ROLL_TAGS = "container_runtime,inference"  # an image change
GATEWAY_PORT = BASE_PORT + 81  # here, forwarded to the gateway's nginx (port 80); test_4_security has + 80
NGINX = f"http://127.0.0.1:{GATEWAY_PORT}"
INSPECT = "'{{.Config.Image}} {{.State.StartedAt}}'"
BATCH_NOTE = re.compile(r"^provision: batch (\d+)/(\d+): (?:(\S+); start|end) (\d\d:\d\d:\d\d)", re.M)


@dataclass
class Traffic:
    """Clients of the gateway's nginx, in rounds until stopped: non-streamed completions (a new connection each, so
    no idle keep-alive connection nginx closes on a reload counts as lost) and streams (a stream cut by a reset
    fails its round; one cut cleanly ends without [DONE])."""

    loads: list[dict] = field(default_factory=list)
    streams: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def _rounds(self, command: tuple[str, ...], into: list[dict], pause: float) -> None:
        while not self.done.is_set():
            try:
                into.append(local_client(*command))
            except Exception as exc:  # reported by check()
                self.failures.append(f"{' '.join(command)}: {exc}")
                return
            self.done.wait(pause)

    def __enter__(self) -> Traffic:
        # Light on purpose: what the gateway and its replicas serve runs emulated, on the CPU the roll and the other
        # lane wait for. One connection of 24-token completions (1.2 s each, about one a second); a 40-token
        # stream (2 s) three times in a row, then 6 s of pause, so some are in flight across each drain.
        load = ("load", NGINX, "--seconds", "20", "--requests", "100000", "--concurrency", "1", "--tokens", "24")
        streams = ("ttft", NGINX, "--repeat", "3", "--tokens", "40")
        self._threads = [
            threading.Thread(target=self._rounds, args=((*load, "--fresh"), self.loads, 0), daemon=True),
            threading.Thread(target=self._rounds, args=(streams, self.streams, 6), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def check(self, at_least: int) -> None:
        """No client failed, no non-streamed request was lost, every stream ended, and enough were made."""
        assert not self.failures, self.failures
        ok = sum(load["ok"] for load in self.loads)
        errors = [load for load in self.loads if load["errors"]]
        assert not errors, f"requests lost: {errors}"
        assert ok >= at_least, f"only {ok} completions in {len(self.loads)} rounds"
        cut = [rounds for rounds in self.streams if rounds["done"] != rounds["runs"]]
        streams = sum(rounds["runs"] for rounds in self.streams)
        assert streams and not cut, f"streams cut short: {cut} (of {streams})"
        print(f"{ok} completions in {len(self.loads)} rounds of 20 s, {streams} streams, none lost or cut")


def image_vars(settings: dict, suffix: str, line: str, **more: object) -> dict:
    """The inference group's settings with the demo image imported under a new tag with one more Dockerfile line."""
    (image,) = settings["container_runtime_images"]
    name = f"{image['name']}-{suffix}"
    changed = {**image, "name": name, "changes": [*image["changes"], line]}
    return {**settings, "container_runtime_images": [changed], "inference_image": name, **more}


def containers(lab: Lab) -> dict[str, tuple[str, datetime]]:
    """Each host's replica: the image it runs and when it started (the guest's clock, which the lab sets)."""
    found = {}
    for host in HOSTS:
        image, started = lab.sh(host, f"sudo docker inspect -f {INSPECT} inference").split()
        found[host] = (image, datetime.fromisoformat(started[:19] + "+00:00"))  # whole seconds
    return found


def batch_times(stderr: str) -> dict[int, dict[str, str]]:
    """The rolling run's notes: batch number -> its host, start and end (HH:MM:SS, the controller's clock)."""
    batches: dict[int, dict[str, str]] = {}
    for number, _total, host, stamp in BATCH_NOTE.findall(stderr):
        batches.setdefault(int(number), {}).update({"host": host, "start": stamp} if host else {"end": stamp})
    return batches


def near(stamp: str, moment: datetime) -> float:
    """The controller's time of day HH:MM:SS (the notes' local time) nearest to `moment`, as a timestamp (a run
    may cross midnight)."""
    local = moment.astimezone()
    day = datetime.combine(local.date(), dtime.fromisoformat(stamp), tzinfo=local.tzinfo).timestamp()
    return min((day + shift for shift in (-86400, 0, 86400)), key=lambda t: abs(t - moment.timestamp()))


@pytest.fixture(scope="module")
def fleet(
    lab: Lab, serving: tuple[Path, str], serving_runs: ServingRuns, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The serving inventory with ROLLED added to the inference group and the gateway's upstream holding the whole
    group; one replica per host, on its private address; converged once (not in batches)."""
    assert serving_runs.first.returncode == 0, serving_runs.first.stdout + serving_runs.first.stderr
    lab.resume(DOCKER_HOST)  # test_5b_nvidia_toolkit paused it
    inventory = tmp_path_factory.mktemp("rolling") / "inventory"
    shutil.copytree(serving[0], inventory)
    with phase("rolling: two more docker-flavor VMs up"):
        for name in ROLLED:
            add_host(inventory / "hosts.yml", name, start_named(lab, tmp_path_factory, name, "docker"))
    groups = yaml.safe_load((inventory / "serving.yml").read_text())
    groups["all"]["children"]["inference"]["hosts"] |= dict.fromkeys(ROLLED)
    (inventory / "serving.yml").write_text(yaml.safe_dump(groups))
    settings = inventory / "group_vars" / "inference.yml"
    settings.write_text(yaml.safe_dump(yaml.safe_load(settings.read_text()) | {"inference_replicas": 1}))
    shutil.rmtree(inventory / "host_vars", ignore_errors=True)  # test_5a_monitoring's settings for the gateway
    (inventory / "host_vars").mkdir()
    (inventory / "host_vars" / f"{DOCKER_HOST}.yml").write_text(yaml.safe_dump({"nginx_upstream_group": "inference"}))
    private = {"inference_bind_address": "{{ private_address }}", "nginx_upstream_address": "{{ private_address }}"}
    for name in ROLLED:
        (inventory / "host_vars" / f"{name}.yml").write_text(yaml.safe_dump(private))
    with phase("rolling: the three hosts converged before the roll"):
        setup = lab.provision("up", "-i", str(inventory), "--tags", TAGS, "--limit", ",".join(HOSTS))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    forward_port(lab, DOCKER_HOST, GATEWAY_PORT, 80)
    yield inventory
    lab.pause(*HOSTS)  # the last module on them: idle, they would take CPU from what runs after


@pytest.fixture(scope="module")
def rolled(lab: Lab, fleet: Path) -> tuple:
    """`provision up --batch 1` with a new image, the clients on the gateway meanwhile: (run, traffic, before)."""
    settings = fleet / "group_vars" / "inference.yml"
    original = yaml.safe_load(settings.read_text())
    settings.write_text(yaml.safe_dump(image_vars(original, "rolled", "ENV PROVISION_ROLL=2")))
    before = containers(lab)
    with Traffic() as traffic, phase("rolling: a new image over three hosts in batches of 1"):
        run = lab.provision("up", "-i", str(fleet), "--tags", ROLL_TAGS, "--limit", ",".join(HOSTS), "--batch", "1")
    return run, traffic, before


def test_fewer_replicas_stop_and_remove_the_units_no_longer_configured(lab: Lab, fleet: Path) -> None:
    """The gateway served two replicas (inference-1, inference-2) before this module's inventory gave it one
    (inference): the old units are gone, and only the new one's container runs (on the port inference-1 had)."""
    assert lab.sh(DOCKER_HOST, "ls /etc/systemd/system/ | grep '^inference'").split() == ["inference.service"]
    assert lab.sh(DOCKER_HOST, "sudo docker ps --format '{{.Names}}'").split() == ["inference"]


def test_a_new_image_rolls_over_the_hosts_one_batch_after_another(lab: Lab, fleet: Path, rolled: tuple) -> None:
    run, _traffic, before = rolled
    assert run.returncode == 0, run.stdout + run.stderr
    batches = batch_times(run.stderr)
    assert [batches[n].get("host") for n in (1, 2, 3)] == list(HOSTS), run.stderr
    after = containers(lab)
    for number, host in enumerate(HOSTS, 1):
        image, started = after[host]
        assert image.endswith("-rolled") and image != before[host][0], (host, image)
        # The host's new container started within its batch (controller and guest clocks agree within a second;
        # the stamps are whole seconds), and the batch began after the one before it ended.
        start, end = (near(batches[number][key], started) for key in ("start", "end"))
        assert start - 2 <= started.timestamp() <= end + 2, (host, started, batches[number])
        if number > 1:
            assert near(batches[number - 1]["end"], started) <= start, f"batch {number} began before {number - 1} ended"
    assert recap(run.stdout).keys() >= set(HOSTS)


def test_no_request_is_lost_and_every_stream_ends_during_the_roll(lab: Lab, rolled: tuple) -> None:
    run, traffic, _before = rolled
    assert run.returncode == 0, run.stdout + run.stderr
    traffic.check(at_least=100)
    # The gateway's nginx sent requests to every host's replica.
    log = lab.sh(DOCKER_HOST, "sudo cat /var/log/nginx/access.log")
    for address in ("127.0.0.1:8000", *(f"{private_address(host)}:8000" for host in ROLLED)):
        assert f"upstream={address} " in log, address


def test_an_image_that_never_gets_healthy_stops_after_the_first_batch(lab: Lab, fleet: Path, rolled: tuple) -> None:
    settings = fleet / "group_vars" / "inference.yml"
    current = yaml.safe_load(settings.read_text())
    unhealthy = image_vars(current, "unhealthy", "ENV DEMO_FAIL_HEALTH=1", inference_health_timeout=10)
    settings.write_text(yaml.safe_dump(unhealthy))
    before = containers(lab)
    with Traffic() as traffic, phase("rolling: an image that never gets healthy"):
        run = lab.provision("up", "-i", str(fleet), "--tags", ROLL_TAGS, "--limit", ",".join(HOSTS), "--batch", "1")
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "provision: batch 1/3 failed on lab5 (1 of 1, more than the 0% allowed); stopped before 2 more" in output
    assert "provision: failed: lab5" in run.stderr and "provision: never touched: lab8, lab9" in run.stderr, output
    assert "batch 2/3" not in run.stderr, output
    # The others untouched (same containers, started when they were) and serving every request meanwhile; the
    # failed host rolled back to the image it had, and still drained on the gateway.
    after = containers(lab)
    for host in ROLLED:
        assert after[host] == before[host], host
    assert after[DOCKER_HOST][0] == before[DOCKER_HOST][0]
    traffic.check(at_least=30)
    conf = lab.sh(DOCKER_HOST, "cat /etc/nginx/nginx.conf")
    assert re.search(r"server 127\.0\.0\.1:8000 .* down;", conf), conf
    lab.sh(DOCKER_HOST, "sudo truncate -s 0 /var/log/nginx/access.log")
    result = local_client("load", NGINX, "--seconds", "5", "--requests", "20", "--concurrency", "2", "--tokens", "1")
    assert result["ok"] == 20 and result["errors"] == 0, result
    served = set(re.findall(r"upstream=(\S+) ", lab.sh(DOCKER_HOST, "sudo cat /var/log/nginx/access.log")))
    assert served == {f"{private_address(host)}:8000" for host in ROLLED}, served
    # The report's command rejoins it as it is.
    rejoin = re.search(r"`(provision up -i \S+ --tags nginx --limit lab5)`", run.stderr)
    assert rejoin, run.stderr
    back = lab.provision(*rejoin[1].split()[1:])
    assert back.returncode == 0, back.stdout + back.stderr
    assert " down;" not in lab.sh(DOCKER_HOST, "cat /etc/nginx/nginx.conf")
