"""Serving on a real lab VM: the demo server as health-gated systemd units behind nginx, streaming.

One VM of the docker flavor (Docker preinstalled, as on many cloud images) joins the session lab.  Its
inventory puts it in the inference and gateway groups with the demo image built by `provision lab demo-image`
(a Debian rootfs, imported by the container_runtime role: no registry involved).  Requests are made on the VM
itself with provision/smoke/llm_client.py (the VM has python3, not curl), so timings are not skewed by the
SSH forwarding.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from labtools import ROOT, Lab, recap

# The session's VMs idle while this module works on its own: paused, they leave it their CPU.
pytestmark = pytest.mark.usefixtures("session_hosts_paused")

CLIENT = "/tmp/llm_client.py"
NGINX = "http://127.0.0.1:80"
DIRECT = "http://127.0.0.1:8000"
TAGS = "container_runtime,inference,nginx"


def client(lab: Lab, host: str, *args: str) -> dict:
    return json.loads(lab.sh(host, f"python3 {CLIENT} {' '.join(args)}").strip().splitlines()[-1])


@pytest.fixture(scope="module")
def serving(lab: Lab, docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An inventory serving two demo replicas behind nginx on the docker host."""
    inventory = tmp_path_factory.mktemp("serving") / "inventory"
    shutil.copytree(lab.inventory, inventory)
    built = lab.provision(
        "lab", "demo-image", "--vars-out", str(inventory / "group_vars" / "inference.yml"), check=True
    )
    assert "provision-demo:" in built.stdout
    settings = yaml.safe_load((inventory / "group_vars" / "inference.yml").read_text())
    settings |= {"inference_replicas": 2, "inference_model_dir": "/srv/models/demo", "inference_restart_sec": 2}
    (inventory / "group_vars" / "inference.yml").write_text(yaml.safe_dump(settings))
    groups = {
        "all": {"children": {"inference": {"hosts": {docker_host: None}}, "gateway": {"hosts": {docker_host: None}}}}
    }
    (inventory / "serving.yml").write_text(yaml.safe_dump(groups))
    script = base64.b64encode((ROOT / "provision/smoke/llm_client.py").read_bytes()).decode()
    lab.sh(docker_host, f"echo {script} | base64 -d > {CLIENT}")
    return inventory, docker_host


@pytest.fixture(scope="module")
def converged(lab: Lab, serving: tuple[Path, str]) -> tuple[subprocess.CompletedProcess[str], ...]:
    inventory, host = serving
    check = lab.provision("up", "-i", str(inventory), "--tags", TAGS, "--limit", host, "--check")
    nothing_yet = lab.sh(host, "test -e /etc/systemd/system/inference-1.service && echo unit || echo no unit").strip()
    first = lab.provision("up", "-i", str(inventory), "--tags", TAGS, "--limit", host)
    second = lab.provision("up", "-i", str(inventory), "--tags", TAGS, "--limit", host)
    return check, nothing_yet, first, second


def test_check_mode_on_a_fresh_host_changes_nothing(converged: tuple, serving: tuple[Path, str]) -> None:
    check, nothing_yet, _, _ = converged
    assert check.returncode == 0, check.stdout + check.stderr
    assert recap(check.stdout)[serving[1]]["changed"] > 0, "check mode should report what the first run changes"
    assert nothing_yet == "no unit"


def test_first_run_serves_and_second_changes_nothing(converged: tuple, serving: tuple[Path, str]) -> None:
    _, _, first, second = converged
    host = serving[1]
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout)[host]["changed"] > 0
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout)[host]["changed"] == 0, second.stdout


def test_units_run_and_nginx_is_not_root(lab: Lab, converged: tuple, serving: tuple[Path, str]) -> None:
    host = serving[1]
    assert lab.sh(host, "systemctl is-active inference-1 inference-2 nginx docker").split() == ["active"] * 4
    assert lab.sh(host, "systemctl is-enabled inference-1 inference-2").split() == ["enabled"] * 2
    workers = lab.sh(host, "ps -o user= -C nginx").split()
    assert workers.count("root") == 1 and "www-data" in workers  # the master binds the port, workers serve
    assert lab.sh(host, "sudo stat -c %a /etc/provision/inference.env").strip() == "600"
    assert "--ipc=host" in lab.sh(host, "cat /etc/systemd/system/inference-1.service")


def test_tokens_stream_through_nginx_as_fast_as_direct(lab: Lab, converged: tuple, serving: tuple[Path, str]) -> None:
    host = serving[1]
    streamed = client(lab, host, "stream", NGINX, "--tokens", "24")
    assert streamed["status"] == 200 and streamed["done"], streamed
    assert streamed["content_type"].startswith("text/event-stream")
    # 24 tokens 50 ms apart: a buffering proxy would deliver them in one lump at the end.
    assert streamed["separate_arrivals"] >= 20, streamed
    assert streamed["total"] > 1.0 and streamed["ttft"] < streamed["total"] / 3, streamed
    through = client(lab, host, "ttft", NGINX, "--repeat", "20", "--tokens", "4")
    direct = client(lab, host, "ttft", DIRECT, "--repeat", "20", "--tokens", "4")
    print(f"TTFT median of 20: nginx {through['median'] * 1000:.1f} ms, direct {direct['median'] * 1000:.1f} ms")
    assert through["ok"] == 20 and direct["ok"] == 20
    assert through["median"] - direct["median"] < 0.050, (through, direct)


def test_provision_test_checks_replicas_and_streaming(lab: Lab, converged: tuple, serving: tuple[Path, str]) -> None:
    inventory, host = serving
    checked = lab.provision("test", "-i", str(inventory), "--limit", host, "-k", "serving")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2 passed" in checked.stdout, checked.stdout


def test_websocket_echo_through_nginx(lab: Lab, converged: tuple, serving: tuple[Path, str]) -> None:
    reply = client(lab, serving[1], "websocket", NGINX, "--message", "ping-from-test")
    assert reply == {"status": 101, "echo": "ping-from-test"}


def test_requests_are_spread_over_both_replicas(lab: Lab, converged: tuple, serving: tuple[Path, str]) -> None:
    host = serving[1]
    lab.sh(host, "sudo truncate -s 0 /var/log/nginx/access.log")
    result = client(
        lab, host, "load", NGINX, "--seconds", "20", "--requests", "40", "--concurrency", "4", "--tokens", "1"
    )
    assert result["ok"] == 40 and result["errors"] == 0, result
    log = lab.sh(host, "sudo cat /var/log/nginx/access.log")
    assert "upstream=127.0.0.1:8000 " in log and "upstream=127.0.0.1:8001 " in log, log


def test_stopping_a_replica_loses_no_request(lab: Lab, converged: tuple, serving: tuple[Path, str]) -> None:
    host = serving[1]
    before = lab.sh(host, "systemctl show -p NRestarts --value inference-1").strip()
    # Non-streamed completions for 12 s from 4 connections; one replica is stopped 4 s in.
    load = f"python3 {CLIENT} load {NGINX} --seconds 12 --requests 100000 --concurrency 4 --tokens 2"
    output = lab.sh(
        host,
        f"{load} > /tmp/load.json & sleep 4; sudo docker stop inference-1 >/dev/null; wait; cat /tmp/load.json",
    )
    result = json.loads(output.strip().splitlines()[-1])
    assert result["ok"] > 20 and result["errors"] == 0, result
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        restarted = lab.sh(host, "systemctl show -p NRestarts --value inference-1").strip()
        healthy = lab.ssh(host, f"python3 {CLIENT} complete {DIRECT} --tokens 1").returncode == 0
        if restarted != before and healthy:
            break
        time.sleep(3)
    else:
        pytest.fail("systemd did not bring inference-1 back within 60 s")


def test_invalid_nginx_config_never_replaces_the_live_one(
    lab: Lab, converged: tuple, serving: tuple[Path, str]
) -> None:
    inventory, host = serving
    live = lab.sh(host, "sha256sum /etc/nginx/nginx.conf")
    host_vars = inventory / "host_vars"
    host_vars.mkdir(exist_ok=True)
    (host_vars / f"{host}.yml").write_text(yaml.safe_dump({"nginx_extra_server_directives": ["no_such_directive on;"]}))
    try:
        bad = lab.provision("up", "-i", str(inventory), "--tags", "nginx", "--limit", host)
    finally:
        (host_vars / f"{host}.yml").unlink()
    assert bad.returncode != 0
    assert 'unknown directive "no_such_directive"' in bad.stdout + bad.stderr
    assert lab.sh(host, "sha256sum /etc/nginx/nginx.conf") == live
    assert client(lab, host, "complete", NGINX, "--tokens", "1")["status"] == 200


def test_a_deploy_that_never_gets_healthy_is_rolled_back(lab: Lab, converged: tuple, serving: tuple[Path, str]) -> None:
    inventory, host = serving
    settings = yaml.safe_load((inventory / "group_vars" / "inference.yml").read_text())
    host_vars = inventory / "host_vars"
    host_vars.mkdir(exist_ok=True)
    broken = {"inference_args": [*settings["inference_args"], "--fail-health"], "inference_health_timeout": 12}
    (host_vars / f"{host}.yml").write_text(yaml.safe_dump(broken))
    try:
        failed = lab.provision("up", "-i", str(inventory), "--tags", "inference", "--limit", host)
    finally:
        (host_vars / f"{host}.yml").unlink()
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "inference deploy failed" in output and "failing on purpose" in output, output  # the container's log
    for unit in ("inference-1", "inference-2"):
        assert "--fail-health" not in lab.sh(host, f"cat /etc/systemd/system/{unit}.service")
    assert not lab.sh(host, "ls /etc/systemd/system/ | grep '~$' || true").strip(), "backups left behind"
    deadline = time.monotonic() + 60
    while lab.ssh(host, f"python3 {CLIENT} complete http://127.0.0.1:8000 --tokens 1").returncode != 0:
        assert time.monotonic() < deadline, "the restored replica did not serve again"
        time.sleep(3)
    assert client(lab, host, "complete", NGINX, "--tokens", "1")["status"] == 200
