"""Monitoring on real lab VMs: exporters, Prometheus and its alerts around the demo replicas behind nginx.

It goes on from test_5_serving, on the same inventory (conftest.py's `serving`) and its converge: check mode, the
first and the second run there installed and checked the monitoring roles too.  The docker VM is in the
inference, gateway and monitoring groups; WATCHED, a plain VM, is a second monitored host.  Both export on their
address on the lab's private segment (monitoring_address from the lab's private_address): Prometheus on the docker
VM scrapes its own node and nginx exporters there, its demo replicas on loopback, and WATCHED's node exporter over
the segment, with intervals shortened by the inventory so alerts go pending and firing within seconds.  WATCHED is
also the VM that is not a monitoring host, which the monitoring host's exporters must not answer.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labtools import CLIENT, REPLICA_BACK, WATCHED, Lab, ServingRuns

from provision import demo_server
from provision.lab import image
from provision.smoke import monitoring_checks

PROMETHEUS = "http://127.0.0.1:9090"
NGINX = "http://127.0.0.1:80"
# The load test: LOAD_CLIENTS one-token completions at once against 2 replicas of MAX_CONCURRENCY slots, each
# taking TOKEN_DELAY, so about 3 in line per slot: a steady-state TTFT of about 3 x 0.2 = 0.6 s, in one of vLLM's
# 0.25 s-wide buckets, 0.4 s above what a server that left out the wait in line would report. And about 10
# requests a second only: the client, nginx, docker-proxy, both replicas and Prometheus share the guest's emulated
# CPU, and time a request waits for that CPU outside the server (in the client, in nginx) is what the client
# measures and the server cannot. (nginx itself never holds a request: no max_conns on its upstream servers.)
MAX_CONCURRENCY = 1
TOKEN_DELAY = 0.2
LOAD_CLIENTS = 6
KILLED = {"alertname": "ReplicaDown", "replica": "inference-2"}  # the alert the replica test provokes
# On top of the serving inventory's monitoring settings: intervals shortened so alerts go pending and firing within
# seconds. A scrape may take as long as the interval: node exporter's systemd collector can take seconds on an
# emulated guest, and under the suite's two lanes a 5 s timeout was missed now and then (HostDown, ReplicaDown
# for replicas nobody stopped). Rules every 5 s, not 2: Prometheus evaluating them took a quarter of the docker
# VM's CPU at 2 s, and in stop 34's CI (both lanes) the VMs' node exporter scrapes missed every 10 s timeout.
SHORT_INTERVALS = {
    "monitoring_server_scrape_interval": "10s",
    "monitoring_server_scrape_timeout": "10s",
    "monitoring_server_evaluation_interval": "5s",
    "monitoring_server_alert_replica_down_for": "10s",
    "monitoring_server_alertmanager_group_wait": "1s",
    "monitoring_server_alertmanager_group_interval": "2s",
}
RECEIVED = "/tmp/webhook.jsonl"
# A webhook receiver on the VM's loopback (the inventory's WEBHOOK): each POST's body as one line of RECEIVED.
RECEIVER = f"""
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open({RECEIVED!r}, "ab") as out:
            out.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", 9099), Handler).serve_forever()
"""


def private_address(inventory: Path, host: str) -> str:
    return str(yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["children"]["lab"]["hosts"][host]
               ["private_address"])  # fmt: skip


@pytest.fixture(scope="module")
def monitored(lab: Lab, serving: tuple[Path, str], serving_runs: ServingRuns) -> Iterator[str]:
    """The docker host's replicas with a concurrency limit and no restarts, Prometheus with SHORT_INTERVALS (the
    test's host vars, which replace the TLS settings test_5_serving left), deployed with `provision up`; a webhook
    receiver on its loopback; WATCHED running again."""
    inventory, host = serving
    assert serving_runs.first.returncode == 0, serving_runs.first.stdout + serving_runs.first.stderr
    lab.resume(WATCHED)
    settings = yaml.safe_load((inventory / "group_vars" / "inference.yml").read_text())
    limited = [
        *settings["inference_args"],
        "--max-concurrency",
        str(MAX_CONCURRENCY),
        "--token-delay",
        str(TOKEN_DELAY),
    ]
    (inventory / "host_vars").mkdir(exist_ok=True)
    (inventory / "host_vars" / f"{host}.yml").write_text(
        yaml.safe_dump({"inference_args": limited, "inference_restart": "no", **SHORT_INTERVALS})
    )
    receiver = base64.b64encode(RECEIVER.encode()).decode()
    lab.sh(host, f"echo {receiver} | base64 -d > /tmp/receiver.py; rm -f {RECEIVED}")
    lab.sh(host, "setsid nohup python3 /tmp/receiver.py >/dev/null 2>&1 < /dev/null &")
    deployed = lab.provision("up", "-i", str(inventory), "--tags", "inference,nginx,monitoring", "--limit", host)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    yield host
    # Scraping every few seconds, they would take the CPU of what runs next (test_5b on this host, lane A).
    lab.sh(host, f"sudo systemctl stop {' '.join(image.MONITORING_PACKAGES)} provision-gateway-metrics.timer")
    lab.pause(WATCHED)


def api(lab: Lab, host: str, path: str) -> dict:
    """GET Prometheus's HTTP API on the VM (it listens on the VM's loopback)."""
    fetch = f"import urllib.request; print(urllib.request.urlopen({PROMETHEUS + path!r}, timeout=10).read().decode())"
    answer = json.loads(lab.sh(host, f"python3 -c {shlex.quote(fetch)}"))
    assert answer["status"] == "success", answer
    return answer["data"]


def status_of(lab: Lab, vm: str, url: str) -> str:
    """The HTTP status of a GET of `url` made on the VM (provision test's own fetch)."""
    return lab.sh(vm, f"python3 -c {shlex.quote(monitoring_checks.FETCH)} {shlex.quote(url)}").splitlines()[0]


def query(lab: Lab, host: str, promql: str) -> list[dict]:
    return api(lab, host, "/api/v1/query?query=" + urllib.parse.quote(promql))["result"]


def wait_for(what: str, probe, seconds: float = 90, every: float = 2, done=bool):  # type: ignore[no-untyped-def]
    """Poll `probe` until `done` says its answer will do (bounded); fail naming `what` and the last answer."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        last = probe()
        if done(last):
            return last
        time.sleep(every)
    pytest.fail(f"{what} within {seconds:.0f} s; last: {last}")


def test_every_target_is_up(lab: Lab, monitored: str) -> None:
    """Every target scraped successfully: each seen up at one look at least (under the suite's load one scrape
    may time out while another target's succeeds, so all up at the same look may not come within the wait)."""
    host = monitored
    seen_up: set[tuple[str, ...]] = set()

    def targets() -> list[tuple[str, ...]]:  # each with its health and last error, for the failure's message
        active = api(lab, host, "/api/v1/targets?state=active")["activeTargets"]
        found = sorted((t["labels"]["job"], t["labels"]["host"], t["labels"].get("replica", ""), t["health"],
                        t.get("lastError", "")) for t in active)  # fmt: skip
        seen_up.update(target[:3] for target in found if target[3] == "up")
        return found

    found = wait_for("every target up at one look at least", targets, seconds=120,
                     done=lambda found: bool(found) and {target[:3] for target in found} <= seen_up)  # fmt: skip
    assert [(job, where, replica) for job, where, replica, *_ in found] == sorted([
        ("inference", host, "inference-1"), ("inference", host, "inference-2"), ("nginx", host, ""),
        ("node", host, ""), ("node", WATCHED, ""), ("prometheus", host, ""),
    ])  # fmt: skip


def test_exporters_listen_on_the_private_address_only_and_the_gateway_refuses_metrics(
    lab: Lab, serving: tuple[Path, str], monitored: str
) -> None:
    inventory, host = serving
    listening = lab.sh(host, "ss -Hltn")
    ports = {9090: "127.0.0.1", 9093: "127.0.0.1", 8089: "127.0.0.1"}
    ports |= {9100: private_address(inventory, host), 9113: private_address(inventory, host)}
    for port, address in ports.items():
        at_port = {line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")}
        assert at_port == {f"{address}:{port}"}, listening
    checked = lab.provision("test", "-i", str(inventory), "--limit", host, "-k", "exporters or prometheus")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2 passed" in checked.stdout, checked.stdout
    for path, status in (("/metrics", 403), ("/sleep", 403), ("/collective_rpc", 403), ("/v1/models", 200)):
        assert status_of(lab, host, NGINX + path) == str(status), path


def test_load_beyond_the_limit_queues_and_ttft_p95_agrees_with_the_client(lab: Lab, monitored: str) -> None:
    """Non-streamed one-token completions: the client's latency is the server's time to first token (from the
    request's arrival at the server, its wait for a slot included, as vLLM's) plus the way through nginx."""
    host = monitored
    load = f"python3 {CLIENT} load {NGINX} --seconds 20 --requests 100000 --concurrency {LOAD_CLIENTS} --tokens 1"
    *_, line, ended = lab.sh(host, f"{load} && date +%s.%N").splitlines()
    result = json.loads(line)
    assert result["errors"] == 0 and result["ok"] > 50, result
    # Both replicas scraped after the last request, so the histograms hold every one of them.
    wait_for("a scrape of both replicas after the load",
             lambda: query(lab, host, "min(timestamp(vllm:num_requests_waiting))"), seconds=30,
             done=lambda found: len(found) == 1 and float(found[0]["value"][1]) > float(ended))  # fmt: skip
    waiting = query(lab, host, "max_over_time(sum(vllm:num_requests_waiting)[1m:1s])")
    assert waiting and float(waiting[0]["value"][1]) > 0, waiting
    promql = "histogram_quantile(0.95, sum by (le) (increase(vllm:time_to_first_token_seconds_bucket[1m])))"
    server_p95 = float(query(lab, host, promql)[0]["value"][1])
    bounds = demo_server.TTFT_BUCKETS
    upper = next(b for b in bounds if b >= result["p95"])
    width = upper - max([0.0, *(b for b in bounds if b < upper)])
    # nginx's view of the same requests, to tell a failure's time apart: in the server or on the way to it.
    logged = lab.sh(
        host, f"sudo grep -F 'POST /v1/chat/completions' /var/log/nginx/access.log | tail -n {result['ok']}"
    )
    nginx = {key: sorted(float(value) for value in re.findall(rf" {key}=([0-9.]+)", logged))
             for key in ("request_time", "upstream_response_time")}  # fmt: skip
    print("nginx p95:", {key: times[int(0.95 * len(times))] for key, times in nginx.items() if times})
    print(f"TTFT p95: client {result['p95']:.3f} s, Prometheus {server_p95:.3f} s, bucket width {width} s")
    assert abs(server_p95 - result["p95"]) <= width, (server_p95, result)


def test_a_replica_stopped_behind_systemds_back_alerts_and_resolves(lab: Lab, monitored: str) -> None:
    host = monitored

    # Only inference-2's alert: under the suite's load a scrape of the other replica may time out now and then.
    def state() -> str:
        alerts = api(lab, host, "/api/v1/alerts")["alerts"]
        return next((a["state"] for a in alerts if a["labels"] == {**a["labels"], **KILLED}), "none")

    wait_for("no ReplicaDown alert for inference-2 before the test", lambda: state() == "none", seconds=60)
    lab.sh(host, "sudo docker kill inference-2 >/dev/null")  # not systemctl stop: the unit sees its server die
    seen = [wait_for("ReplicaDown pending", lambda: state() == "pending" and "pending", seconds=30, every=1)]
    seen.append(wait_for("ReplicaDown firing", lambda: state() == "firing" and "firing", seconds=60, every=1))
    lab.sh(host, "sudo systemctl start inference-2")  # then the container's start and health (REPLICA_BACK)
    seen.append(wait_for("ReplicaDown resolved", lambda: state() == "none" and "resolved", seconds=REPLICA_BACK))
    assert seen == ["pending", "firing", "resolved"]

    def notified() -> list[str]:  # what Alertmanager posted to the webhook about inference-2's alert, in order
        lines = lab.sh(host, f"cat {RECEIVED} 2>/dev/null; true").splitlines()
        posts = [json.loads(line) for line in lines if line.strip()]
        return [alert["status"] for post in posts for alert in post["alerts"]
                if alert["labels"] == {**alert["labels"], **KILLED}]  # fmt: skip

    statuses = wait_for("the webhook told of ReplicaDown firing, then resolved",
                        lambda: "resolved" in notified() and notified(), seconds=60)  # fmt: skip
    assert statuses[0] == "firing" and statuses[-1] == "resolved", statuses


# From the outsider: each address:port as "open", "refused" or "timeout" (a filter that drops the SYN).
PROBE = """
import socket, sys
for target in sys.argv[1:]:
    address, port = target.rsplit(":", 1)
    try:
        socket.create_connection((address, int(port)), timeout=5).close()
        print(target, "open")
    except ConnectionRefusedError:
        print(target, "refused")
    except TimeoutError:
        print(target, "timeout")
    except OSError as e:
        print(target, e.strerror or e)
"""


def test_from_another_vm_the_exporters_are_closed_while_the_monitoring_host_scrapes_them(
    lab: Lab, serving: tuple[Path, str], monitored: str
) -> None:
    """WATCHED is the other VM: monitored, not a monitoring host. (Its own exporter is not probed from itself:
    every exporter lets its host's own address in, so that a monitoring host can scrape itself; WATCHED's unit
    has the same drop-in as the docker host's, whose exporters are probed here.)"""
    inventory, host = serving
    monitoring, scraped = private_address(inventory, host), private_address(inventory, WATCHED)
    closed = [f"{monitoring}:{port}" for port in (9100, 9113, 9090, 9093, 8089, 8000, 8001)]
    answers = dict(line.split(" ", 1) for line in lab.sh(WATCHED, f"python3 - {' '.join(closed)}", stdin=PROBE)
                   .splitlines())  # fmt: skip
    assert set(answers) == set(closed) and set(answers.values()) <= {"refused", "timeout"}, answers
    # The exporters themselves drop the other VM (systemd's IPAddressDeny): no answer, not a refusal.
    assert answers[f"{monitoring}:9100"] == answers[f"{monitoring}:9113"] == "timeout", answers
    # Meanwhile the monitoring host reads WATCHED's node exporter over the segment, and Prometheus has it up.
    assert status_of(lab, host, f"http://{scraped}:9100/metrics") == "200"
    wait_for(f"Prometheus has {WATCHED}'s node exporter up",  # (a scrape under the suite's load may time out)
             lambda: [sample["value"][1] for sample in query(lab, host, f'up{{job="node",host="{WATCHED}"}}')],
             seconds=60, done=lambda values: values == ["1"])  # fmt: skip
    # The gateway answers the other VM, but not with the replicas' metrics or admin routes.
    statuses = {path: status_of(lab, WATCHED, f"http://{monitoring}:80{path}")
                for path in ("/metrics", "/reset_prefix_cache", "/v1/models")}  # fmt: skip
    assert statuses == {"/metrics": "403", "/reset_prefix_cache": "403", "/v1/models": "200"}, statuses
