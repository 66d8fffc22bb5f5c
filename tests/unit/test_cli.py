"""The CLI's contract: flags in, library calls out, and every error mapped to its exit code in one line.

runner.run is replaced by a stub that records whether it was called, so no test here connects anywhere;
preflight errors must stop before the stub is reached.
"""

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provision import paths, runner
from provision.errors import ExitCode
from provision.runner import HostStats, RunRequest, RunResult, TaskEvent, task_event

Write = Callable[[str, str], Path]


class RunnerStub:
    def __init__(self, result: RunResult) -> None:
        self.result = result
        self.requests: list[RunRequest] = []

    def __call__(
        self,
        request: RunRequest,
        on_event: Callable[[TaskEvent], None],
        note: Callable[[str], None] | None = None,
    ) -> RunResult:
        self.requests.append(request)
        on_event(task_event({"event": "playbook_on_play_start", "event_data": {"name": "Prepare the base system"}}))
        on_event(task_event({"event": "runner_on_ok", "event_data": {"host": "local1", "task": "Do", "res": {}}}))
        return self.result


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> RunnerStub:
    fake = RunnerStub(RunResult("successful", 0, {"local1": HostStats(ok=1)}, None))
    monkeypatch.setattr(runner, "run", fake)
    return fake


@pytest.fixture(autouse=True)
def site(write: Write, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A playbook project of our own, so the tests do not depend on the real playbooks' tags."""
    site = write("playbooks/site.yml", "- hosts: all\n  tasks:\n    - name: T\n      tags: [base, mirror]\n")
    monkeypatch.setattr(paths, "SITE_PLAYBOOK", site)
    return site


@pytest.fixture(scope="module")
def loaded_inventory(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from provision import inventory

    path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    path.write_text(
        f"all:\n  hosts:\n    local1:\n      ansible_python_interpreter: {sys.executable}\n"
        "  children:\n    lab:\n      hosts:\n        lab1:\n        lab2:\n"
        "    gpu:\n      hosts:\n        gpu1:\n"
    )
    return inventory.load_inventory(path)


@pytest.fixture
def preflighted(loaded_inventory: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An inventory loaded once for real, then served from memory (ansible-inventory takes ~1 s a call)."""
    from provision import inventory

    monkeypatch.setattr(inventory, "load_inventory", lambda path: loaded_inventory)
    return Path(loaded_inventory.path)


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, f"expected one line, got {text!r}"
    return text.rstrip("\n")


def test_up_missing_inventory(run_cli: Any, stub: RunnerStub, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("up", "-i", "does-not-exist.yml")
    assert result.code == ExitCode.USAGE == 2
    assert one_line(result.err) == "provision: error: inventory does-not-exist.yml: no such file or directory"
    assert stub.requests == []


def test_up_yaml_syntax_error_names_file_and_line(
    run_cli: Any, stub: RunnerStub, write: Write, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    write("inventories/x/hosts.yml", "all:\n  hosts:\n    lab1:\n   bad: indent\n")
    result = run_cli("up", "-i", "inventories/x/hosts.yml")
    assert result.code == 2
    assert one_line(result.err).startswith("provision: error: inventories/x/hosts.yml:4:")
    assert stub.requests == []


def test_up_unknown_tag(run_cli: Any, stub: RunnerStub, local_inventory: Path) -> None:
    result = run_cli("up", "-i", str(local_inventory), "--tags", "base,bogus")
    assert result.code == 2
    assert one_line(result.err) == "provision: error: unknown tag 'bogus' (known: base, mirror)"
    assert stub.requests == []


def test_up_unknown_skip_tag(run_cli: Any, stub: RunnerStub, local_inventory: Path) -> None:
    result = run_cli("up", "-i", str(local_inventory), "--skip-tags", "nope")
    assert result.code == 2
    assert "unknown tag 'nope'" in one_line(result.err)
    assert stub.requests == []


@pytest.mark.parametrize("bad", ["novalue", "=x", "not an identifier=1", "@missing.yml"])
def test_up_malformed_extra_vars(run_cli: Any, stub: RunnerStub, local_inventory: Path, bad: str) -> None:
    result = run_cli("up", "-i", str(local_inventory), "-e", bad)
    assert result.code == 2
    assert one_line(result.err).startswith("provision: error: -e ")
    assert stub.requests == []


def test_up_passes_the_request(run_cli: Any, stub: RunnerStub, local_inventory: Path, write: Write) -> None:
    varsfile = write("vars.yml", "a: 1\nb: [x]\n")
    result = run_cli(
        "up", "-i", str(local_inventory), "--limit", "local1", "-t", "base", "--tags", "mirror,always",
        "--skip-tags", "base", "--check", "--diff", "-e", f"@{varsfile}", "-e", "b=2", "-e", "c=x=y",
    )  # fmt: skip
    assert result.code == 0, result.err
    (request,) = stub.requests
    assert request.inventory == local_inventory
    assert request.limit == "local1"
    assert request.tags == ("base", "mirror", "always")
    assert request.skip_tags == ("base",)
    assert request.check and request.diff
    assert dict(request.extravars) == {"a": 1, "b": "2", "c": "x=y"}
    assert "PLAY Prepare the base system" in result.out
    assert "  ok           local1  Do" in result.out
    assert "local1  ok=1 changed=0 unreachable=0 failed=0 skipped=0 rescued=0 ignored=0" in result.out


@pytest.mark.parametrize(
    ("status", "stats", "code", "verdict"),
    [
        ("successful", {"local1": HostStats(ok=3)}, ExitCode.OK, None),
        ("canceled", {}, ExitCode.INTERRUPTED, "interrupted"),
        ("failed", {"local1": HostStats(ok=1, failed=1)}, ExitCode.FAILED, "failed on local1"),
        ("failed", {"local1": HostStats(unreachable=1)}, ExitCode.UNREACHABLE, "unreachable: local1"),
        ("failed", {}, ExitCode.FAILED, "status failed"),
    ],
)
def test_up_exit_code_follows_status_and_stats(
    run_cli: Any,
    stub: RunnerStub,
    preflighted: Path,
    status: str,
    stats: dict[str, HostStats],
    code: ExitCode,
    verdict: str | None,
) -> None:
    stub.result = RunResult(status, 2, stats, None)
    result = run_cli("up", "-i", str(preflighted))
    assert result.code == code
    assert len(stub.requests) == 1
    if verdict is None:
        assert result.err == ""
    else:
        assert verdict in one_line(result.err)


def test_exit_code_values() -> None:
    assert {c.name: c.value for c in ExitCode} == {
        "OK": 0, "FAILED": 1, "USAGE": 2, "ENVIRONMENT": 3, "UNREACHABLE": 4, "INTERRUPTED": 130,
        "HANGUP": 129, "TERMINATED": 143,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("signum", "code", "verdict"),
    [
        (signal.SIGTERM, 143, "stopped by SIGTERM; hosts may be half-provisioned"),
        (signal.SIGHUP, 129, "stopped by SIGHUP; hosts may be half-provisioned"),
        (signal.SIGINT, 130, "interrupted; hosts may be half-provisioned"),
    ],
)
def test_up_stopped_by_a_signal_exits_128_plus_its_number(
    run_cli: Any, stub: RunnerStub, preflighted: Path, signum: int, code: int, verdict: str
) -> None:
    stub.result = RunResult("canceled", 254, {"local1": HostStats(ok=1)}, None, signal=signum)
    result = run_cli("up", "-i", str(preflighted))
    assert result.code == code
    assert verdict in one_line(result.err)


@pytest.mark.parametrize("limit", ["nosuchhost", "lab1,nosuchhost", "all:!nosuchhost", "lab*:&nosuch*"])
def test_up_limit_matching_nothing_is_a_usage_error(
    run_cli: Any, stub: RunnerStub, preflighted: Path, limit: str
) -> None:
    result = run_cli("up", "-i", str(preflighted), "--limit", limit)
    assert result.code == ExitCode.USAGE
    name = limit.rsplit(":", 1)[-1].split(",")[-1].lstrip("!&")
    assert one_line(result.err) == (
        f"provision: error: --limit {limit!r}: {name!r} matches no host or group in {preflighted}; "
        "nothing was contacted"
    )
    assert stub.requests == []


@pytest.mark.parametrize("limit", ["lab1", "lab*,gpu", "all:!lab2", "lab:&lab1", "~lab[12]", "lab[0]"])
def test_up_limit_matching_hosts_runs(run_cli: Any, stub: RunnerStub, preflighted: Path, limit: str) -> None:
    assert run_cli("up", "-i", str(preflighted), "--limit", limit).code == 0
    assert [r.limit for r in stub.requests] == [limit]


def test_up_passes_the_token_variable_an_inventory_names(run_cli: Any, stub: RunnerStub, write: Write) -> None:
    inventory = write(
        "named/hosts.yml",
        "all:\n  hosts:\n    h1:\n      weights_token_env: HF_TOKEN\n    h2:\n      weights_token_env: ''\n",
    )
    assert run_cli("up", "-i", str(inventory), "-e", "weights_token_env=MIRROR_TOKEN").code == 0
    assert stub.requests[0].controller_env == ("HF_TOKEN", "MIRROR_TOKEN")


def test_debug_shows_the_traceback(run_cli: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("--debug", "up", "-i", "nope.yml")
    assert result.code == 2
    assert "Traceback (most recent call last)" in result.err
    assert result.err.rstrip().endswith("provision: error: inventory nope.yml: no such file or directory")


def test_click_usage_errors_exit_2(run_cli: Any) -> None:
    assert run_cli("up").code == 2  # -i is required
    assert run_cli("up", "-i", "x", "--no-such-flag").code == 2
    assert run_cli("frobnicate").code == 2


def test_help_and_version_exit_0(run_cli: Any) -> None:
    assert run_cli("--help").code == 0
    version = run_cli("--version")
    assert version.code == 0 and "0.1.0" in version.out


# ---- render -------------------------------------------------------------------------------------------


@pytest.fixture
def serving_inventory(write: Write) -> Path:
    """local1 in the inference group (which playbooks/serving.yml runs the inference role on), db1 in none."""
    return write(
        "serving/hosts.yml",
        "all:\n  children:\n    inference:\n      hosts:\n        local1:\n    db:\n      hosts:\n        db1:\n",
    )


def test_render_to_out_dir(run_cli: Any, serving_inventory: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("render", "-i", str(serving_inventory), "--host", "local1", "--out", str(out))
    assert result.code == 0, result.err
    unit = (out / "inference.service").read_text()
    assert unit.startswith("# Managed by provision; local changes will be overwritten.\n")
    assert "wrote " in result.out


def test_render_to_stdout_has_headers(run_cli: Any, serving_inventory: Path) -> None:
    result = run_cli("render", "-i", str(serving_inventory), "--host", "local1")
    assert result.code == 0
    assert result.out.startswith("# ==> inference.service <==\n# Managed by provision")


def test_render_for_a_host_outside_the_serving_groups_says_there_is_nothing(
    run_cli: Any, serving_inventory: Path, tmp_path: Path
) -> None:
    result = run_cli("render", "-i", str(serving_inventory), "--host", "db1", "--out", str(tmp_path / "out"))
    assert result.code == 0
    assert result.out == "" and not (tmp_path / "out").exists()
    assert one_line(result.err) == (
        "nothing to render for db1: site.yml runs inference on 'inference', nginx on 'gateway' and "
        "monitoring_server on 'monitoring', and db1 is in none of them"
    )


def test_render_unknown_host(run_cli: Any, local_inventory: Path) -> None:
    result = run_cli("render", "-i", str(local_inventory), "--host", "ghost")
    assert result.code == 2
    assert "host 'ghost' is not in inventory" in one_line(result.err)


# ---- test ---------------------------------------------------------------------------------------------


class PytestStub:
    def __init__(self) -> None:
        self.rc = 0
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: list[str], env: dict[str, str]) -> int:
        self.calls.append((argv, env))
        return self.rc


@pytest.fixture
def pytest_stub(monkeypatch: pytest.MonkeyPatch) -> PytestStub:
    fake = PytestStub()
    monkeypatch.setattr("provision.cli.smoke._run_pytest", fake)
    return fake


@pytest.mark.parametrize(("pytest_rc", "code"), [(0, 0), (1, 1), (2, 1), (5, 2)])
def test_test_runs_the_smoke_suite(
    run_cli: Any, pytest_stub: PytestStub, preflighted: Path, tmp_path: Path, pytest_rc: int, code: int
) -> None:
    local_inventory = preflighted
    pytest_stub.rc = pytest_rc
    junit = tmp_path / "junit.xml"
    result = run_cli("test", "-i", str(local_inventory), "--junit", str(junit), "-k", "ssh", "--limit", "lab*,gpu")
    assert result.code == code
    ((argv, env),) = pytest_stub.calls
    assert argv[1:3] == ["-m", "pytest"]
    assert Path(argv[3]).name == "smoke"
    assert "--hosts=ansible://lab*,ansible://gpu" in argv
    assert f"--ansible-inventory={local_inventory.resolve()}" in argv
    assert f"--junitxml={junit}" in argv
    assert argv[argv.index("-k") : argv.index("-k") + 2] == ["-k", "ssh"]
    assert "-p" in argv and "no:cacheprovider" in argv
    assert env["ANSIBLE_CONFIG"] == str(paths.ANSIBLE_CFG)


def test_test_rejects_ansible_only_limit_patterns(run_cli: Any, pytest_stub: PytestStub, preflighted: Path) -> None:
    local_inventory = preflighted
    result = run_cli("test", "-i", str(local_inventory), "--limit", "all:!lab2")
    assert result.code == 2
    result = run_cli("test", "-i", str(local_inventory), "--limit", "lab1,nothere")
    assert result.code == 2
    assert "'nothere' matches no host or group" in one_line(result.err)
    assert pytest_stub.calls == []


def test_render_into_an_unwritable_place_says_so_in_one_line(run_cli: Any, write: Write, tmp_path: Path) -> None:
    inventory = write("serving/hosts.yml", "all:\n  children:\n    gateway:\n      hosts:\n        gw1:\n")
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out"
    result = run_cli("render", "-i", str(inventory), "--host", "gw1", "--out", str(out))
    assert result.code == 2
    assert result.err == f"provision: error: --out: cannot write {out}/nginx.conf: Not a directory\n"


# ---- lab ----------------------------------------------------------------------------------------------


def test_lab_commands_call_the_lab_api(run_cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from provision import lab

    calls: dict[str, Any] = {}

    def fake_up(hosts: int, inventory_out: Path, mirror: bool, log: Callable[[str], None], **kw: Any) -> list[Any]:
        calls["up"] = (hosts, inventory_out, mirror, kw)
        log("booting")
        return [lab.LabHost("lab1", 2201, 42)]

    monkeypatch.setattr(lab, "up", fake_up)
    monkeypatch.setattr(lab, "status", lambda: [lab.LabHostStatus("lab1", 2201, None, False)])
    monkeypatch.setattr(lab, "down", lambda log: ["lab1"])
    monkeypatch.setattr(lab, "ssh_argv", lambda name, command: ["true", name, *command])
    monkeypatch.setattr("provision.cli.lab.os.execvp", lambda file, argv: calls.setdefault("exec", argv))

    out = tmp_path / "lab.yml"
    result = run_cli("lab", "up", "--hosts", "3", "--no-mirror", "--inventory-out", str(out))
    assert result.code == 0
    assert calls["up"] == (3, out, False, {"flavor": "plain", "only": None})
    assert "booting" in result.err and "lab1  127.0.0.1:2201  pid 42" in result.out

    run_cli("lab", "up", "--base-port", "2300")
    assert calls["up"] == (
        2, paths.INVENTORIES / "lab" / "hosts.yml", True, {"flavor": "plain", "only": None, "base_port": 2300}
    )  # fmt: skip
    run_cli("lab", "up", "--name", "lab6", "--flavor", "nvidia")
    assert calls["up"][0] == 6 and calls["up"][3] == {"flavor": "nvidia", "only": 6}
    bad = run_cli("lab", "up", "--name", "gpu1")
    assert bad.code == 2 and "--name: 'gpu1' is not a lab VM's name" in bad.err
    assert run_cli("lab", "status").out == "lab1  127.0.0.1:2201  stopped\n"
    assert run_cli("lab", "down").out == "stopped: lab1\n"
    assert run_cli("lab", "ssh", "lab1", "ls", "-la").code == 0
    assert calls["exec"] == ["true", "lab1", "ls", "-la"]
    assert run_cli("lab", "up", "--hosts", "0").code == 2

    def fake_prepare(log: Callable[[str], None], flavor: str) -> tuple[None, Path]:
        calls.setdefault("prepare", []).append(flavor)
        return None, tmp_path / "templates" / flavor

    monkeypatch.setattr(lab, "prepare", fake_prepare)
    prepared = run_cli("lab", "prepare", "--flavor", "oci", "--flavor", "docker")
    assert prepared.code == 0 and calls["prepare"] == ["oci", "docker"]
    assert prepared.out == f"oci: ready ({tmp_path}/templates/oci)\ndocker: ready ({tmp_path}/templates/docker)\n"
    run_cli("lab", "prepare")
    assert calls["prepare"][-1] == "plain"


def test_lab_help_lists_every_flavor(run_cli: Any) -> None:
    from provision.lab.image import FLAVORS

    shown = run_cli("lab", "--help").out
    section = shown.split("Flavors (--flavor of up and prepare):\n")[1].split("\n\n")[0]
    assert [line.split()[0] for line in section.splitlines()] == list(FLAVORS), shown


def test_lab_prepare_names_an_unknown_flavor(run_cli: Any) -> None:
    bad = run_cli("lab", "prepare", "--flavor", "gpu")
    assert bad.code == 2 and "--flavor: unknown flavor 'gpu' (known: plain, oci, selinux, docker, nvidia)" in bad.err
