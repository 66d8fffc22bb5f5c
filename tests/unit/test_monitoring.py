"""Monitoring: the gateway's metrics script (the monitoring_agent role's textfile collector), the GPU path that no
machine here can run (dcgm-exporter: proven on its rendered files), and what the scrape config takes from the
inventory."""

import importlib.util
import json
import ssl
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision import paths, render
from provision.inventory import Inventory, load_inventory
from provision.smoke import monitoring_checks

GOLDEN = Path(__file__).parents[1] / "golden" / "render"
SCRIPT = paths.ROLES / "monitoring_agent/files/provision_gateway_metrics.py"
spec = importlib.util.spec_from_file_location("provision_gateway_metrics", SCRIPT)
assert spec and spec.loader
gateway = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gateway)

LINE = (
    '127.0.0.1 - - [26/Nov/2026:09:00:00 +0000] "POST /v1/chat/completions HTTP/1.1" 200 12 '
    "upstream={upstream} upstream_status={status} request_time=0.1 upstream_connect_time=0.0 "
    "upstream_header_time=0.1 upstream_response_time=0.1"
)


@pytest.mark.parametrize(
    ("status", "counted"),
    [
        ("200", {"200": 1}),
        ("502, 200", {"502": 1, "200": 1}),  # the first replica failed, the next one answered
        ("504 : 200", {"504": 1, "200": 1}),  # an internal redirect to another upstream group
        ("-", {}),  # answered by nginx itself (a 403 for /metrics, a redirect)
    ],
)
def test_upstream_answers_are_counted_by_status(status: str, counted: dict[str, int]) -> None:
    assert gateway.count_statuses([LINE.format(upstream="127.0.0.1:8000", status=status)]) == Counter(counted)


def test_new_lines_only_and_a_rotated_log_read_from_its_start(tmp_path: Path) -> None:
    log, state = tmp_path / "access.log", {}
    log.write_text("one\ntwo\nhalf")
    assert gateway.read_new_lines(str(log), state) == ["one", "two"]
    with log.open("a") as out:
        out.write(" a line\nthree\n")
    assert gateway.read_new_lines(str(log), state) == ["half a line", "three"]
    assert gateway.read_new_lines(str(log), state) == []
    log.unlink()
    log.write_text("after rotation\n")
    assert gateway.read_new_lines(str(log), state) == ["after rotation"]


def test_certificates_come_from_nginx_T() -> None:
    config = "server {\n    ssl_certificate /etc/nginx/tls/provision.crt;\n    ssl_certificate_key /k;\n}\n"
    assert gateway.certificate_paths(config) == ["/etc/nginx/tls/provision.crt"]


def test_a_certificate_expiry_is_read(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "10", "-subj", "/CN=gw1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    not_after = gateway.not_after(str(cert))
    decoded = ssl._ssl._test_decode_cert(str(cert))  # type: ignore[attr-defined]
    assert not_after == ssl.cert_time_to_seconds(decoded["notAfter"])
    assert gateway.not_after(str(tmp_path / "missing.pem")) is None


def test_exposition_parses_as_prometheus_text(require_promtool: str) -> None:
    text = gateway.exposition(Counter({"200": 5, "502": 1}), {"/etc/a.crt": 1.9e9, "/etc/unreadable.crt": None})
    assert 'provision_nginx_upstream_responses_total{status="502"} 1' in text
    assert 'provision_tls_certificate_not_after_seconds{path="/etc/a.crt"} 1900000000' in text
    assert "unreadable" not in text
    checked = subprocess.run([require_promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_script_runs_as_the_timer_runs_it(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(LINE.format(upstream="127.0.0.1:8001", status="502, 200") + "\n")
    argv = [str(log), str(tmp_path / "state.json"), str(tmp_path / "provision_gateway.prom")]
    for _ in range(2):  # counters carry over from the state file; nothing is counted twice
        assert subprocess.run(["python3", str(SCRIPT), *argv], check=False).returncode == 0
    text = (tmp_path / "provision_gateway.prom").read_text()
    assert 'provision_nginx_upstream_responses_total{status="200"} 1\n' in text
    assert 'provision_nginx_upstream_responses_total{status="502"} 1\n' in text


# ---- dcgm-exporter: not obtainable here, so its files are what is proven --------------------------------


def test_dcgm_exporter_never_pulls_when_it_starts() -> None:
    unit = (GOLDEN / "monitoring-gpu-host/expected/dcgm-exporter.service").read_text()
    assert "--pull=never" in unit and "pull " not in unit.replace("--pull=never", "")
    assert "-p 10.1.0.7:9400:9400" in unit  # the private address, never every address
    tasks = yaml.safe_load((paths.ROLES / "monitoring_agent/tasks/dcgm.yml").read_text())
    pulls = [t for t in tasks for inner in t.get("block", [t]) if "pull" in str(inner.get("ansible.builtin.command"))]
    assert [t["when"] for t in pulls] == ["__monitoring_agent_dcgm_image.rc != 0"]  # only while the image is missing


def test_dcgm_counters_count_xid_errors_over_a_window_and_export_what_the_rules_use() -> None:
    fields = [line.split(",")[0] for line in (GOLDEN / "monitoring-gpu-host/expected/dcgm-counters.csv").read_text()
              .splitlines() if line and not line.startswith("#")]  # fmt: skip
    rules = (GOLDEN / "monitoring-fleet/expected/provision-alerts.yml").read_text()
    used = {name for name in ("DCGM_EXP_XID_ERRORS_COUNT", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_ROW_REMAP_FAILURE")}
    assert all(name in rules for name in used) and used <= set(fields)
    assert fields[-1] == "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"  # the case's extra counter


# ---- the scrape config comes from the whole inventory ---------------------------------------------------


def test_scrape_targets_cover_the_whole_inventory_and_name_each_host() -> None:
    inventory = load_inventory(GOLDEN / "monitoring-fleet/inventory.yml")
    (config,) = [f for f in render.render_host(inventory, "mon1") if f.name == "prometheus.yml"]
    jobs = {job["job_name"]: job["static_configs"] for job in yaml.safe_load(config.text)["scrape_configs"]}
    node = {c["labels"]["host"]: c["targets"] for c in jobs["node"]}
    assert sorted(node) == sorted(inventory.hosts)
    assert node["mon1"] == ["10.0.0.10:9100"]  # monitoring_address first
    assert node["gpu1"] == ["203.0.113.12:9100"]  # then ansible_host
    assert node["db1"] == ["db1:9100"]  # else the inventory name
    assert [c["targets"] for c in jobs["inference"]] == [["10.0.0.11:8000"], ["10.0.0.11:8001"], ["203.0.113.12:9000"]]
    assert [c["labels"]["host"] for c in jobs["dcgm"]] == ["gpu1"]


def test_replicas_are_scraped_where_they_listen(tmp_path: Path) -> None:
    """Loopback replicas on the Prometheus host itself at 127.0.0.1, privately bound ones at their address."""
    (tmp_path / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"children": {
            "monitoring": {"hosts": {"mon1": {"monitoring_address": "10.0.0.10"}}},
            "inference": {"hosts": {"mon1": None, "gw1": {"inference_bind_address": "10.0.0.11"},
                                    "any1": {"inference_bind_address": "0.0.0.0", "monitoring_address": "10.0.0.12"}}},
        }}})
    )  # fmt: skip
    (config,) = [
        f for f in render.render_host(load_inventory(tmp_path / "hosts.yml"), "mon1") if f.name == "prometheus.yml"
    ]
    (inference,) = [job for job in yaml.safe_load(config.text)["scrape_configs"] if job["job_name"] == "inference"]
    targets = {c["labels"]["host"]: c["targets"] for c in inference["static_configs"]}
    assert targets == {"mon1": ["127.0.0.1:8000"], "gw1": ["10.0.0.11:8000"], "any1": ["10.0.0.12:8000"]}


def test_exporters_accept_the_host_itself_and_the_monitoring_hosts_only() -> None:
    """systemd's per-unit filter in the exporters' drop-ins: it holds on a host without a firewall."""
    inventory = load_inventory(GOLDEN / "monitoring-fleet/inventory.yml")
    assert render.HostVars(inventory, "gw1")["__monitoring_agent_ip_access"] == [
        "IPAddressDeny=any", "IPAddressAllow=localhost 10.0.0.11 10.0.0.10"
    ]  # fmt: skip
    assert (
        render.HostVars(inventory, "db1")["__monitoring_agent_ip_access"][1]
        == "IPAddressAllow=localhost 127.0.0.1 10.0.0.10"
    )
    assert render.HostVars(inventory, "mon1")["__monitoring_agent_ip_access"][1] == "IPAddressAllow=localhost 10.0.0.10"


def handed_to_the_firewall(inventory: Inventory, host: str) -> dict[str, Any]:
    """What playbooks/firewall.yml hands the firewall role on `host`: the monitoring agent's published ports and
    sources (its tasks/ports.yml sets them from these internals)."""
    agent = render.HostVars(inventory, host)
    return {
        "firewall_monitoring_ports": agent["__monitoring_agent_ports"],
        "firewall_monitoring_sources": agent["monitoring_agent_allow_from"],
    }


def test_a_host_firewall_opens_the_exporters_to_the_monitoring_hosts_only() -> None:
    inventory = load_inventory(GOLDEN / "monitoring-fleet/inventory.yml")
    gateway = render.HostVars(inventory, "gw1", handed_to_the_firewall(inventory, "gw1"))
    assert gateway["__firewall_source_rules"] == [
        {"port": 9100, "proto": "tcp", "source": "10.0.0.10"}, {"port": 9113, "proto": "tcp", "source": "10.0.0.10"}
    ]  # fmt: skip
    rule = render.HostVars(inventory, "gw1", {"__firewall_port": gateway["__firewall_source_rules"][0]})
    assert rule["__firewall_rule"] == "-s 10.0.0.10/32 -p tcp -m state --state NEW -m tcp --dport 9100 -j ACCEPT"
    plain = render.HostVars(inventory, "gw1", {"__firewall_port": {"port": 443}})
    assert plain["__firewall_rule"] == "-p tcp -m state --state NEW -m tcp --dport 443 -j ACCEPT"  # as it was
    gpu = render.HostVars(inventory, "gpu1", handed_to_the_firewall(inventory, "gpu1"))
    assert gpu["__firewall_source_rules"] == []  # exporters on loopback there


# ---- provision test's checks ------------------------------------------------------------------------------

SS = """LISTEN 0      4096       127.0.0.1:9100      0.0.0.0:*
LISTEN 0      4096               *:9113            *:*
LISTEN 0      511          0.0.0.0:80        0.0.0.0:*
LISTEN 0      4096       [::1]:9090            [::]:*
"""


@pytest.mark.parametrize(
    ("name", "address", "port", "problems"),
    [
        ("node exporter", "127.0.0.1", 9100, []),
        ("the nginx exporter", "127.0.0.1", 9113,
         ["the nginx exporter listens on *:9113, not only 127.0.0.1:9113 (exporters are never world-open)"]),
        ("Prometheus", "::1", 9090, []),
        ("dcgm-exporter", "10.0.0.5", 9400, ["dcgm-exporter listens nowhere on port 9400 (wanted 10.0.0.5:9400)"]),
    ],
)  # fmt: skip
def test_listen_problems(name: str, address: str, port: int, problems: list[str]) -> None:
    assert monitoring_checks.listen_problems(SS, name, address, port) == problems


def test_targets_down_names_job_host_and_error() -> None:
    answer = {"data": {"activeTargets": [
        {"labels": {"job": "node", "host": "lab1"}, "scrapeUrl": "http://127.0.0.1:9100/metrics", "health": "up"},
        {"labels": {"job": "inference", "host": "lab1"}, "scrapeUrl": "http://127.0.0.1:8001/metrics",
         "health": "down", "lastError": "connection refused"},
    ]}}  # fmt: skip
    assert monitoring_checks.targets_down(json.dumps(answer)) == {
        "http://127.0.0.1:8001/metrics": (
            "inference target http://127.0.0.1:8001/metrics (host lab1) is down: connection refused"
        )
    }


# ---- the gateway refuses /metrics and the admin routes; stub_status on loopback (real nginx) ---------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_rendered_gateway_refuses_metrics_and_admin_routes_and_serves_stub_status(tmp_path: Path) -> None:
    """nginx.conf as rendered, run by this machine's nginx in front of the demo server."""
    import http.client
    import shutil
    import threading

    from provision import demo_server
    from provision.inventory import Inventory

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is not installed (Debian package nginx)"
    server = demo_server.serve(demo_server.options(["--host", "127.0.0.1", "--port", "0", "--token-delay", "0"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port, status_port = _free_port(), _free_port()
    hostvars = {"nginx_port": port, "nginx_stub_status_port": status_port, "inference_port": server.server_address[1],
                "nginx_access_log": str(tmp_path / "access.log"), "nginx_include_conf_d": False}  # fmt: skip
    inventory = Inventory(Path("hosts.yml"), ("gw1",), {"gw1": hostvars}, {"gateway": ("gw1",)})
    (conf,) = [f.text for f in render.render_host(inventory, "gw1") if f.name == "nginx.conf"]
    conf = conf.replace("pid /run/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    conf = conf.replace("error_log /var/log/nginx/error.log;", f"error_log {tmp_path}/error.log;")
    conf = conf.replace("include /etc/nginx/modules-enabled/*.conf;", "")  # this machine's modules, if any
    (tmp_path / "nginx.conf").write_text(conf)
    nginx_argv = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")]
    started = subprocess.run(nginx_argv, capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr
    try:

        def get(path: str, at: int = port) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", at, timeout=10)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            return status

        for path in (
            "/metrics",
            "/metrics/",
            "/sleep",
            "/wake_up?tags=weights",
            "/collective_rpc",
            "/reset_prefix_cache",
        ):
            assert get(path) == 403, path
        assert get("/v1/models") == 200 and get("/metricsx") == 404  # only the routes themselves, passed on otherwise
        assert get("/stub_status", status_port) == 200
        assert get("/metrics", server.server_address[1]) == 200  # the replica itself still answers Prometheus
    finally:
        subprocess.run([*nginx_argv, "-s", "stop"], check=False)
        server.shutdown()
        server.server_close()


def test_fetch_runs_through_a_shell_as_testinfra_runs_it() -> None:
    """The GET helper of `provision test`'s checks, through a real shell (quoting, newlines in the program)."""
    import threading
    from types import SimpleNamespace

    from provision import demo_server

    class Shell:
        def run(self, command: str) -> SimpleNamespace:
            done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
            return SimpleNamespace(rc=done.returncode, stdout=done.stdout, stderr=done.stderr)

    server = demo_server.serve(demo_server.options(["--host", "127.0.0.1", "--port", "0"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, body = monitoring_checks.fetch(Shell(), f"{base}/health?a=1&b=2")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert monitoring_checks.fetch(Shell(), f"{base}/nope")[0] == 404
        assert monitoring_checks.fetch(Shell(), "http://127.0.0.1:1/")[0] is None  # nothing answers there
    finally:
        server.shutdown()
        server.server_close()


class ScriptedHost:
    """A testinfra host whose GETs (FETCH's output) answer `answers` in turn, the last one repeating; `ss` answers
    `ss_output`. `asked` counts the GETs."""

    def __init__(self, answers: list[str], ss_output: str = "") -> None:
        self.answers, self.ss_output, self.asked = answers, ss_output, 0

    def run(self, command: str) -> Any:
        from types import SimpleNamespace

        if command.startswith("ss "):
            return SimpleNamespace(rc=0, stdout=self.ss_output, stderr="")
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        return SimpleNamespace(rc=0, stdout=answer, stderr="")


def test_an_exporters_503_is_asked_again_and_the_last_answer_counts() -> None:
    """node exporter answers 503 while its limit of scrapes is in flight: `scrape` asks again, a bounded number
    of times, and reports what the last try got."""

    def answering(statuses: list[int]) -> ScriptedHost:
        return ScriptedHost([f"{status}\nbody {status}" for status in statuses])

    busy_then_free = answering([503, 503, 200])
    assert monitoring_checks.scrape(busy_then_free, "http://10.0.0.1:9100/metrics", pause=0) == (200, "body 200")
    assert busy_then_free.asked == 3
    always_busy = answering([503])
    assert monitoring_checks.scrape(always_busy, "http://10.0.0.1:9100/metrics", tries=4, pause=0)[0] == 503
    assert always_busy.asked == 4
    not_found = answering([404, 200])
    assert monitoring_checks.scrape(not_found, "http://10.0.0.1:9100/metrics", pause=0)[0] == 404
    assert not_found.asked == 1


def test_a_target_is_reported_down_only_when_it_is_down_at_every_look() -> None:
    """One scrape that timed out is not a down target: prometheus_problems looks again; a target down at every
    look is reported with what the last look said, and a Prometheus that does not answer is reported at once."""

    def targets(**health: str) -> str:
        return json.dumps({"data": {"activeTargets": [
            {"labels": {"job": "node", "host": name}, "scrapeUrl": f"http://{name}:9100/metrics",
             "health": "down" if error else "up", "lastError": error}
            for name, error in health.items()
        ]}})  # fmt: skip

    def prometheus_answering(answers: list[str]) -> ScriptedHost:
        return ScriptedHost(answers, ss_output="LISTEN 0 4096 10.0.0.1:9090 0.0.0.0:*\n")

    variables = {"monitoring_server_listen_address": "10.0.0.1", "monitoring_server_port": 9090}
    once = prometheus_answering(["200\n" + targets(a="deadline exceeded", b=""), "200\n" + targets(a="", b="")])
    assert monitoring_checks.prometheus_problems(once, variables, pause=0) == []
    assert once.asked == 2
    # b is down at one look only; a at all four, its last error is the one reported.
    always = prometheus_answering([
        "200\n" + targets(a="deadline exceeded", b="refused"), "200\n" + targets(a="refused", b=""),
        "200\n" + targets(a="refused", b="timeout"), "200\n" + targets(a="no route", b=""),
    ])  # fmt: skip
    assert monitoring_checks.prometheus_problems(always, variables, pause=0) == [
        "node target http://a:9100/metrics (host a) is down: no route"
    ]
    assert always.asked == 4
    silent = prometheus_answering(["503\n"])
    assert monitoring_checks.prometheus_problems(silent, variables, pause=0) == [
        "Prometheus does not answer at 10.0.0.1:9090: 503"
    ]
    assert silent.asked == 1
