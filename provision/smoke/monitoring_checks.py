"""Checks for the monitoring roles: every exporter answers on its address and listens nowhere else, the gateway
refuses /metrics, and Prometheus sees every target up. Pure functions parse what the host said; the
`*_problems` functions take a testinfra host."""

import json
import shlex
import time
from collections.abc import Mapping
from typing import Any

EVERY_ADDRESS = ("0.0.0.0", "*", "[::]", "::")


def bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def listen_problems(ss_output: str, name: str, address: str, port: int) -> list[str]:
    """From `ss -Hltn`: the port must be listened on at `address` and nowhere else."""
    wanted = f"{bracketed(address)}:{port}"
    local = [fields[3] for fields in (line.split() for line in ss_output.splitlines()) if len(fields) >= 4]
    at_port = [where for where in local if where.rsplit(":", 1)[-1] == str(port)]
    if not at_port:
        return [f"{name} listens nowhere on port {port} (wanted {wanted})"]
    elsewhere = sorted(set(at_port) - {wanted})
    if elsewhere:
        return [f"{name} listens on {', '.join(elsewhere)}, not only {wanted} (exporters are never world-open)"]
    return []


def targets_down(api_answer: str) -> dict[str, str]:
    """From Prometheus's /api/v1/targets: each active target that is not up, by its scrape URL, with its job, host
    and error."""
    targets = json.loads(api_answer)["data"]["activeTargets"]
    return {
        t["scrapeUrl"]: f"{t['labels'].get('job')} target {t['scrapeUrl']} (host {t['labels'].get('host', '?')}) is "
        f"{t['health']}: {t.get('lastError') or 'not scraped yet'}"
        for t in targets
        if t["health"] != "up"
    }


FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=10); print(r.status); print(r.read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code)\n"
)


def fetch(host: Any, url: str) -> tuple[int | None, str]:
    """(HTTP status, body) of a GET made on the host itself; (None, the reason) when nothing answered."""
    result = host.run(f"python3 -c {shlex.quote(FETCH)} {shlex.quote(url)}")
    if result.rc != 0:
        return None, (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
    status, _, body = result.stdout.partition("\n")
    return int(status), body


def scrape(host: Any, url: str, tries: int = 5, pause: float = 1.0) -> tuple[int | None, str]:
    """`fetch` of an exporter's /metrics. node exporter answers 503 at once while its limit of scrapes is in
    flight (monitoring_agent_node_exporter_max_requests; Prometheus's scrape may be one): asked again after
    `pause`, up to `tries` times."""
    for _ in range(tries - 1):
        status, body = fetch(host, url)
        if status != 503:
            return status, body
        time.sleep(pause)
    return fetch(host, url)


def exporter_problems(host: Any, variables: Mapping[str, Any], gateway: bool) -> list[str]:
    address = str(variables["monitoring_agent_listen_address"])
    exporters = [("node exporter", int(variables["monitoring_agent_node_exporter_port"]))]
    if gateway:
        exporters.append(("the nginx exporter", int(variables["monitoring_agent_nginx_exporter_port"])))
    listening = host.run("ss -Hltn").stdout
    problems = []
    for name, port in exporters:
        problems += listen_problems(listening, name, address, port)
        status, body = scrape(host, f"http://{bracketed(address)}:{port}/metrics")
        if status != 200:
            problems.append(f"{name} does not answer at {bracketed(address)}:{port}/metrics: {status or body}")
    if gateway:
        for path in ("/metrics", *[f"/{denied}" for denied in variables["nginx_denied_paths"][1:2]]):
            status, body = fetch(host, f"http://127.0.0.1:{int(variables['nginx_port'])}{path}")
            if status != 403:
                problems.append(f"the gateway answers {path} with {status or body}, not 403")
    return problems


def prometheus_problems(host: Any, variables: Mapping[str, Any], looks: int = 4, pause: float = 5.0) -> list[str]:
    """Prometheus listens on its address only and has every target up. A target is down when its last scrape
    failed, and one scrape may time out on a busy host: a target is reported when it is down at each of `looks`
    looks, `pause` apart (by default 15 s, the default scrape interval), with what the last look said."""
    address, port = str(variables["monitoring_server_listen_address"]), int(variables["monitoring_server_port"])
    problems = listen_problems(host.run("ss -Hltn").stdout, "Prometheus", address, port)
    url = f"http://{bracketed(address)}:{port}/api/v1/targets?state=active"
    down: dict[str, str] | None = None
    for look in range(looks):
        if look:
            time.sleep(pause)
        status, body = fetch(host, url)
        if status != 200:
            return [*problems, f"Prometheus does not answer at {bracketed(address)}:{port}: {status or body}"]
        now = targets_down(body)
        down = now if down is None else {target: now[target] for target in down if target in now}
        if not down:
            break
    return problems + list((down or {}).values())
