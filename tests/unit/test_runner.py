"""The runner wrapper: command line, outcome rules, and real ansible-runner runs on this machine.

The real runs use `connection: local` against a throwaway project, so they need no VM and no SSH
(except the unreachable case, which connects to a closed port on 127.0.0.1).
"""

import json
import os
import pty
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
import terminal as terminal_io
from local_play import PLAYBOOK, provision_env

from provision import paths, play, runner
from provision.errors import ExitCode
from provision.runner import HostStats, RunRequest, RunResult, TaskEvent
from provision.tools import ansible_tool

Write = Callable[[str, str], Path]


def test_cmdline_from_request() -> None:
    request = RunRequest(
        inventory=Path("inv"), limit="lab1,gpu", tags=("a", "b"), skip_tags=("c",), check=True, diff=True
    )
    assert runner.cmdline(request) == [
        "--limit", "lab1,gpu", "--tags", "a,b", "--skip-tags", "c", "--check", "--diff",
    ]  # fmt: skip
    assert runner.cmdline(RunRequest(inventory=Path("inv"))) == []


def test_stats_from_playbook_on_stats_event() -> None:
    data = {
        "ok": {"lab1": 6, "lab2": 1},
        "changed": {"lab1": 4},
        "failures": {"lab1": 1},
        "dark": {"lab2": 1},
        "skipped": {"lab1": 1},
        "rescued": {},
        "ignored": {"lab1": 1},
        "processed": {"lab1": 1, "lab2": 1, "lab3": 1},
    }
    assert runner.stats_from_event(data) == {
        "lab1": HostStats(ok=6, changed=4, failed=1, skipped=1, ignored=1),
        "lab2": HostStats(ok=1, unreachable=1),
        "lab3": HostStats(),
    }


@pytest.mark.parametrize(
    ("status", "stats", "expected"),
    [
        ("successful", {"lab1": HostStats(ok=3)}, ExitCode.OK),
        ("canceled", {"lab1": HostStats(failed=1)}, ExitCode.INTERRUPTED),
        ("failed", {"lab1": HostStats(failed=1), "lab2": HostStats(unreachable=1)}, ExitCode.FAILED),
        ("failed", {"lab1": HostStats(ok=1), "lab2": HostStats(unreachable=1)}, ExitCode.UNREACHABLE),
        ("failed", {}, ExitCode.FAILED),
        ("timeout", {}, ExitCode.FAILED),
        # rc != 0 with clean stats (an error after the last task): still a failure, not OK.
        ("failed", {"lab1": HostStats(ok=1)}, ExitCode.FAILED),
    ],
)
def test_outcome(status: str, stats: dict[str, HostStats], expected: ExitCode) -> None:
    assert play.outcome(RunResult(status=status, rc=2, stats=stats, artifacts_dir=None)).code is expected


# ---- real runs ----------------------------------------------------------------------------------------


@pytest.fixture
def project(write: Write) -> Path:
    return write("project/site.yml", PLAYBOOK).parent


def run(project: Path, inventory: Path, on_event: Callable[[TaskEvent], None] | None = None, **kw: Any):
    request = RunRequest(inventory=inventory, project_dir=project, **kw)
    return runner.run(request, on_event or (lambda event: None))


def report(events: list[TaskEvent]) -> list[str]:
    (message,) = [e.result.msg for e in events if e.kind == "runner_on_ok" and e.task == "Report the environment"]
    return message.split("|")


def test_real_run_private_dir_is_private_temporary_and_removed(project: Path, local_inventory: Path) -> None:
    seen: list[TaskEvent] = []
    modes: list[int] = []

    def on_event(event: TaskEvent) -> None:
        seen.append(event)
        if event.kind == "runner_on_ok" and not modes:
            artifact_dir = Path(report([event])[0])
            modes.append(artifact_dir.parents[1].stat().st_mode & 0o777)

    result = run(project, local_inventory, on_event, extravars={"who": "world"})

    assert result.status == "successful"
    assert result.stats == {"local1": HostStats(ok=2, changed=1)}
    assert play.outcome(result).code is ExitCode.OK
    assert result.artifacts_dir is None
    artifact_dir, cache_dir, host_key_checking, who = report(seen)
    private_dir = Path(artifact_dir).parents[1]
    assert private_dir.name.startswith("provision-")
    assert modes == [0o700]
    assert not private_dir.is_relative_to(paths.ROOT)
    assert not private_dir.exists(), "the private data dir must be removed after the run"
    # Facts are cached where ansible.cfg says, not in the temporary dir that is about to disappear.
    assert not cache_dir.startswith(str(private_dir))
    if "ANSIBLE_HOST_KEY_CHECKING" not in os.environ:
        assert host_key_checking == "True"
    assert who == "world"


def test_real_run_keeps_artifacts_and_honours_tags(project: Path, local_inventory: Path) -> None:
    result = run(project, local_inventory, tags=("report",), keep_artifacts=True)
    try:
        assert result.stats == {"local1": HostStats(ok=1)}
        assert result.artifacts_dir is not None
        assert result.artifacts_dir.is_dir()
        assert result.artifacts_dir.stat().st_mode & 0o777 == 0o700
        assert list(result.artifacts_dir.glob("artifacts/*/job_events/*.json"))
    finally:
        if result.artifacts_dir is not None:
            shutil.rmtree(result.artifacts_dir)


def test_real_run_failed_and_unreachable_hosts(project: Path, write: Write) -> None:
    inventory = write(
        "mixed.yml",
        "all:\n  hosts:\n"
        f"    local1: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}\n"
        "    gone: {ansible_host: 127.0.0.1, ansible_port: 1}\n",
    )
    both = run(project, inventory, tags=("fail",))
    assert both.stats["local1"].failed == 1
    assert both.stats["gone"].unreachable == 1
    assert play.outcome(both).code is ExitCode.FAILED

    only_unreachable = run(project, inventory, tags=("change",), limit="gone")
    assert only_unreachable.status == "failed"
    assert play.outcome(only_unreachable).code is ExitCode.UNREACHABLE


@pytest.mark.parametrize("strategy", runner.STRATEGIES)
def test_what_a_role_wants_read_travels_as_data_in_the_result(
    write: Write, local_inventory: Path, strategy: str
) -> None:
    """fail_with_details (playbooks/action_plugins) puts the details and the stage beside the msg, as the
    inference, live_config and ssh roles use it; events shows the details below the failure line."""
    from provision import events

    project = write(
        "details/site.yml",
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: Give up\n      fail_with_details:\n"
        "        msg: the unit did not start\n        stage: guard\n"
        "        details: \"{{ ['--- last lines ---', 'first', '', 'second'] }}\"\n",
    ).parent
    (project / "action_plugins").symlink_to(paths.PLAYBOOKS / "action_plugins")
    seen: list[TaskEvent] = []
    result = run(project, local_inventory, seen.append, strategy=strategy)
    assert result.stats["local1"].failed == 1
    (failed,) = [e for e in seen if e.kind == "runner_on_failed"]
    assert failed.result.msg == "the unit did not start"
    assert failed.result.details == ("--- last lines ---", "first", "", "second")
    assert failed.result.stage == "guard"
    line = events.event_line(failed)
    assert line is not None and line.text.splitlines() == [
        "  failed       local1  Give up: the unit did not start",
        "      | --- last lines ---",
        "      | first",
        "      | ",
        "      | second",
    ]


@pytest.mark.parametrize("strategy", runner.STRATEGIES)
def test_the_weights_progress_poll_reads_the_file_on_the_host_under_each_strategy(
    write: Write, local_inventory: Path, tmp_path: Path, strategy: str
) -> None:
    """The weights role's poll (its action plugin runs one shell line on the host): summary, started, finished."""
    progress, never = tmp_path / "progress.json", tmp_path / "none.json"
    progress.write_text(json.dumps({"pid": os.getpid(), "summary": "1.0 GiB of 2.0 GiB (50%)", "finished": False}))
    project = write(
        "poll/site.yml",
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - name: Show the download progress\n      weights_progress:\n        path: {progress}\n"
        f"    - name: Poll a pull that never started\n      weights_progress:\n        path: {never}\n",
    ).parent
    (project / "action_plugins").symlink_to(paths.ROLES / "weights" / "action_plugins")
    seen: list[TaskEvent] = []
    result = run(project, local_inventory, seen.append, strategy=strategy)
    assert result.stats["local1"].ok == 2, [e for e in seen if e.kind == "runner_on_failed"]
    running, not_started = [e.result for e in seen if e.kind == "runner_on_ok"]
    assert running.summary == "1.0 GiB of 2.0 GiB (50%)" and not running.changed
    assert not_started.summary == ""


def test_ctrl_c_cancels_the_run_and_restores_the_handler(project: Path, local_inventory: Path) -> None:
    before = signal.getsignal(signal.SIGINT)

    def on_event(event: TaskEvent) -> None:
        if event.kind == "runner_on_start" and event.task == "Sleep":
            os.kill(os.getpid(), signal.SIGINT)

    started = time.monotonic()
    result = run(project, local_inventory, on_event, tags=("sleep",))
    assert time.monotonic() - started < 30, "the 60 s task must have been cut short"
    assert result.status == "canceled"
    assert play.outcome(result).code is ExitCode.INTERRUPTED
    assert signal.getsignal(signal.SIGINT) is before
    time.sleep(1)
    survivors = [
        pid for pid in os.listdir("/proc")
        if pid.isdigit() and str(local_inventory).encode() in _cmdline(pid)
    ]  # fmt: skip
    assert not survivors, f"processes of the cancelled run are still running: {survivors}"


def _survivors(inventory: Path) -> list[str]:
    return [pid for pid in os.listdir("/proc") if pid.isdigit() and str(inventory).encode() in _cmdline(pid)]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_the_run_like_ctrl_c(
    project: Path, local_inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, code: int
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def on_event(event: TaskEvent) -> None:
        if event.kind == "runner_on_start" and event.task == "Sleep":
            os.kill(os.getpid(), signum)

    result = run(project, local_inventory, on_event, tags=("sleep",))
    assert result.status == "canceled" and result.signal == signum
    assert play.outcome(result).code == code
    assert {s: signal.getsignal(s) for s in before} == before
    assert list((tmp_path / "tmp").glob("provision-*")) == [], "the private data dir must be removed"
    assert not _survivors(local_inventory), "processes of the stopped run are still running"


def test_an_ignored_signal_stays_ignored(project: Path, local_inventory: Path) -> None:
    """nohup ignores SIGHUP so that a run outlives its terminal: the run must not install a handler over that."""

    def on_event(event: TaskEvent) -> None:
        if event.kind == "runner_on_start":
            os.kill(os.getpid(), signal.SIGHUP)

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        result = run(project, local_inventory, on_event, tags=("report",))
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert result.status == "successful" and result.signal is None
    assert play.outcome(result).code is ExitCode.OK


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_provision_up_exits_128_plus_the_signal_and_leaves_nothing_behind(
    project: Path, local_inventory: Path, tmp_path: Path, signum: int, code: int
) -> None:
    """The real command in its own process: the signal comes from outside, mid-task."""
    env, scratch = provision_env(project, tmp_path)
    argv = [sys.executable, "-m", "provision", "up", "-i", str(local_inventory), "--tags", "sleep"]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # ansible-playbook runs once the play starts; the only task sleeps 60 s
            seen.append(line)
            if line.startswith("PLAY"):
                proc.send_signal(signum)
                break
        out, err = proc.communicate()
    assert proc.returncode == code, "".join(seen) + out + err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert "Traceback" not in err
    # (The killed task's own module payload may stay in TMPDIR: with connection local this is also the host.)
    assert list(scratch.glob("provision-*")) == [], "the private data dir must be removed"
    assert not _survivors(local_inventory), "processes of the stopped run are still running"


def test_provision_up_exits_129_when_its_terminal_closes(project: Path, local_inventory: Path, tmp_path: Path) -> None:
    """A closed terminal: the kernel sends SIGHUP, and every later write to the terminal fails."""
    env, scratch = provision_env(project, tmp_path)
    argv = [sys.executable, "-m", "provision", "up", "-i", str(local_inventory), "--tags", "sleep"]
    pid, terminal = pty.fork()
    if pid == 0:  # the child: provision, on the pseudo-terminal
        os.execve(sys.executable, argv, env)
    shown = terminal_io.read_until(terminal, b"PLAY")  # ansible-playbook runs; the only task sleeps 60 s
    os.close(terminal)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 129, shown
    assert list(scratch.glob("provision-*")) == [], "the private data dir must be removed"
    assert not _survivors(local_inventory), "processes of the stopped run are still running"


def test_only_the_allowed_environment_reaches_ansible_and_the_kept_artifacts(
    project: Path, local_inventory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary, token, agent = secrets.token_hex(16), secrets.token_hex(16), f"/tmp/agent-{secrets.token_hex(8)}"
    monkeypatch.setenv("PROVISION_TEST_CANARY", canary)
    monkeypatch.setenv("SOME_SERVICE_TOKEN", canary)
    monkeypatch.setenv("SSH_AUTH_SOCK", agent)  # on the allow-list: ssh needs it
    monkeypatch.setenv("PROVISION_TEST_TOKEN", token)  # named by the run (as weights_token_env names one)
    seen: list[TaskEvent] = []
    result = run(
        project,
        local_inventory,
        seen.append,
        tags=("env",),
        keep_artifacts=True,
        controller_env=("PROVISION_TEST_TOKEN",),
    )
    assert result.artifacts_dir is not None
    try:
        assert result.status == "successful"
        (message,) = [e.result.msg for e in seen if e.kind == "runner_on_ok"]
        assert message == f"{agent}|{len(token)}", "an allowed or named variable did not reach the play"
        files = [p for p in result.artifacts_dir.rglob("*") if p.is_file()]
        assert any(agent.encode() in p.read_bytes() for p in files), "the recorded environment was not searched"
        for path in files:
            data = path.read_bytes()
            assert canary.encode() not in data, f"{path} holds the controller's canary variable"
            assert token.encode() not in data, f"{path} holds the value of a named variable"
    finally:
        shutil.rmtree(result.artifacts_dir)


def test_the_fact_cache_is_private(
    project: Path, local_inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ansible.cfg caches facts in ~/.cache/provision/facts: 0700, its files readable by the user alone."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANSIBLE_CACHE_PLUGIN_CONNECTION", raising=False)
    previous = os.umask(0o022)
    try:
        result = run(project, local_inventory, tags=("facts",))
    finally:
        os.umask(previous)
    assert result.status == "successful"
    cache = tmp_path / "home/.cache/provision/facts"
    files = list(cache.iterdir())
    assert files, "no facts were cached"
    assert cache.stat().st_mode & 0o777 == 0o700
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# ---- strategy ----------------------------------------------------------------------------------------

STRATEGY_SITE = """\
- name: Report the strategy
  hosts: all
  gather_facts: false
  tasks:
    - name: Report the strategy
      ansible.builtin.debug:
        msg: "strategy={{ lookup('ansible.builtin.config', 'DEFAULT_STRATEGY') }}"
"""


def test_mitogen_is_the_default_strategy_and_linear_runs_without_it() -> None:
    notes: list[str] = []
    env = runner.envvars(RunRequest(inventory=Path("inv")), notes.append)
    assert env["ANSIBLE_STRATEGY"] == "provision_mitogen"
    ours, mitogens = env["ANSIBLE_STRATEGY_PLUGINS"].split(os.pathsep)[:2]
    assert (Path(ours) / "provision_mitogen.py").is_file()
    assert (Path(mitogens) / "mitogen_linear.py").is_file()
    assert notes == []
    linear = runner.envvars(RunRequest(inventory=Path("inv"), strategy="linear"), notes.append)
    assert "ANSIBLE_STRATEGY" not in linear and "ANSIBLE_STRATEGY_PLUGINS" not in linear
    assert notes == []


@pytest.mark.parametrize("mitogen_installed", [True, False])
def test_up_without_mitogen_says_so_once_and_runs_with_the_stock_strategy(
    write: Write, local_inventory: Path, tmp_path: Path, mitogen_installed: bool
) -> None:
    """The real CLI in a fresh interpreter; "not installed" is an ansible_mitogen package without its plugins
    ahead of the real one on the path, as a broken or partial install looks."""
    home = write("home/playbooks/site.yml", STRATEGY_SITE).parents[1]
    env = {**os.environ, "PROVISION_HOME": str(home)}
    env.pop("PROVISION_STRATEGY", None)
    if not mitogen_installed:
        write("shadow/ansible_mitogen/__init__.py", "")
        env["PYTHONPATH"] = str(tmp_path / "shadow")
    proc = subprocess.run(
        [sys.executable, "-m", "provision", "up", "-i", str(local_inventory), "-v"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    about_mitogen = [line for line in proc.stderr.splitlines() if "Mitogen" in line]
    if mitogen_installed:
        assert "strategy=provision_mitogen" in proc.stdout
        assert about_mitogen == []
    else:
        assert "strategy=linear" in proc.stdout
        assert about_mitogen == [
            "provision: Mitogen's strategy plugin is not installed (pip install 'provision' brings it); "
            "running with Ansible's stock strategy, which is slower"
        ]
    assert "DEPRECATION" not in proc.stdout + proc.stderr


# ---- one changing run per host -----------------------------------------------------------------------

SLOW_SITE = """\
- name: Take a while
  hosts: all
  gather_facts: false
  tasks:
    - name: Wait until the test lets the run go on
      ansible.builtin.wait_for:
        path: "{{ release }}"
        timeout: 120
      when: release is defined
    - name: Sleep
      ansible.builtin.command: sleep {{ nap | default(0) }}
      changed_when: false
"""


def test_a_second_up_on_a_busy_host_waits_for_the_first_and_no_lock_outlives_a_run(
    write: Write, local_inventory: Path
) -> None:
    home = write("home/playbooks/site.yml", SLOW_SITE).parents[1]
    env = {**os.environ, "PROVISION_HOME": str(home)}
    up = [sys.executable, "-m", "provision", "up", "-i", str(local_inventory)]

    def start(*more: str, stderr: IO[str] | int = subprocess.PIPE) -> subprocess.Popen[str]:
        return subprocess.Popen([*up, *more], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)

    # The first run holds its lock until the test creates `release` (its task waits for the file): the checks
    # below happen while it runs however slowly a loaded machine starts the others (a fixed 8 s nap ran out
    # before a --check run beside the suite's lanes had ended, s38).
    release = home / "release"
    first = start("-e", f"release={release}")
    deadline = time.monotonic() + 60
    locks = Path(os.environ["PROVISION_LOCK_DIR"])
    while f'"pid": {first.pid},' not in "".join(p.read_text() for p in locks.glob("*.lock")):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
        time.sleep(0.1)
    second_errors = home / "second.err"
    with second_errors.open("w") as stderr:
        second = start(stderr=stderr)
    # --check changes nothing, so it may look while the first run goes on.
    looking = subprocess.run([*up, "--check"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert looking.returncode == 0 and first.poll() is None, looking.stdout + looking.stderr
    deadline = time.monotonic() + 120
    while "waiting for it to end" not in second_errors.read_text():
        assert second.poll() is None and time.monotonic() < deadline, "the second run never said it waits"
        time.sleep(0.1)
    assert first.poll() is None and second.poll() is None, "a run ended while the first held the host"
    release.touch()
    second_out, _ = second.communicate(timeout=120)
    first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, second_out + second_errors.read_text()
    (line,) = second_errors.read_text().splitlines()
    assert line.startswith("provision: local1 (local1:22) is being provisioned by another run: ")
    assert f"pid {first.pid}," in line and f"-e release={release}" in line
    assert line.endswith("waiting for it to end (Ctrl-C to give up)")

    # A run stopped by Ctrl-C leaves no lock behind: the next one goes straight on.
    interrupted = start("-e", "nap=60")
    while f'"pid": {interrupted.pid},' not in "".join(p.read_text() for p in locks.glob("*.lock")):
        assert interrupted.poll() is None, "the run never took its lock"
        time.sleep(0.1)
    time.sleep(2)
    interrupted.send_signal(signal.SIGINT)
    interrupted.communicate(timeout=60)
    assert interrupted.returncode == ExitCode.INTERRUPTED
    after = subprocess.run(up, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert after.returncode == 0 and "waiting" not in after.stderr, after.stdout + after.stderr


PASS_THROUGH_SITE = """\
- name: Tasks as root through su, and one as the login user when asked
  hosts: all
  gather_facts: false
  become: true
  become_method: ansible.builtin.su
  tasks:
    - name: As root
      ansible.builtin.command: id -u
      changed_when: false
    - name: As the login user
      ansible.builtin.command: id -u
      become: false
      changed_when: false
      when: mixed | bool
"""


@pytest.mark.parametrize("strategy", ["provision_mitogen", "mitogen_linear"])
@pytest.mark.parametrize("mixed", [False, True])
def test_a_context_that_become_only_passes_through_is_not_prepared_until_a_task_runs_in_it(
    write: Write, local_inventory: Path, strategy: str, mixed: bool
) -> None:
    """Mitogen reaches root through the login user's Python (here: local, then su). Stock mitogen_linear
    prepares both for tasks (module_utils pushed, init_child run); provision_mitogen prepares the login user's
    only when a task runs as that user."""
    site = write("site.yml", PASS_THROUGH_SITE)
    env = {**os.environ, **runner.envvars(RunRequest(inventory=local_inventory)), "MITOGEN_LOG_LEVEL": "debug"}
    env["ANSIBLE_STRATEGY"] = strategy
    proc = subprocess.run(
        [ansible_tool("ansible-playbook"), "-i", str(local_inventory), str(site), "-e", f"mixed={mixed}", "-vvv"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"ok={2 if mixed else 1} " in proc.stdout
    prepared = re.findall(r"starting function call to (\S+): ansible_mitogen\.target\.init_child\(", proc.stdout)
    as_root = [name for name in prepared if name.endswith(".su.root")]
    as_login_user = [name for name in prepared if not name.endswith(".su.root")]
    assert len(as_root) == 1, prepared
    assert len(as_login_user) == (1 if mixed or strategy == "mitogen_linear" else 0), prepared


LOGIN = {
    "method": "ssh",
    "kwargs": {
        "hostname": "10.0.0.5", "username": "ops", "port": 22, "python_path": ["/usr/bin/python3"],
        "ssh_args": ["-C", "-o", "ControlMaster=auto", "-o", "ControlPersist=300s"],
    },
}  # fmt: skip
SUDO = {
    "method": "sudo",
    "enable_lru": True,
    "kwargs": {
        "username": "root", "password": None, "python_path": ["/usr/bin/python3"], "sudo_path": None,
        "sudo_args": ["-H", "-S", "-n"],  # Ansible's default become_flags
    },
}  # fmt: skip


def test_ssh_then_passwordless_sudo_is_one_hop_running_sudos_command() -> None:
    from provision.strategy_plugins import provision_mitogen

    spec = provision_mitogen.joined([LOGIN, SUDO])
    assert spec == {
        "method": "ssh",
        "kwargs": {**LOGIN["kwargs"], "python_path": ["sudo", "-n", "-u", "root", "-H", "--", "/usr/bin/python3"]},
    }
    other = {**SUDO, "kwargs": {**SUDO["kwargs"], "username": "postgres", "sudo_path": "/usr/local/bin/sudo"}}
    spec = provision_mitogen.joined([LOGIN, other])
    assert spec is not None
    assert spec["kwargs"]["python_path"][:4] == ["/usr/local/bin/sudo", "-n", "-u", "postgres"]


@pytest.mark.parametrize(
    "stack",
    [
        [LOGIN],
        [{**LOGIN, "method": "local"}, SUDO],
        [LOGIN, {**SUDO, "method": "su"}],
        [LOGIN, {**SUDO, "kwargs": {**SUDO["kwargs"], "password": "s3cret"}}],
        [LOGIN, {**SUDO, "kwargs": {**SUDO["kwargs"], "sudo_args": ["-i"]}}],
        [LOGIN, {**SUDO, "kwargs": {**SUDO["kwargs"], "sudo_args": ["--unknown-flag"]}}],
        [LOGIN, {**SUDO, "kwargs": {**SUDO["kwargs"], "python_path": ["source", "/venv/bin/activate;", "python"]}}],
        [LOGIN, LOGIN, SUDO],
    ],
    ids=["login-only", "not-ssh", "su", "sudo-password", "sudo-login-shell", "unknown-flag", "shell-line", "via"],
)
def test_what_one_hop_cannot_do_the_same_is_left_to_mitogens_two(stack: list[dict[str, Any]]) -> None:
    from provision.strategy_plugins import provision_mitogen

    assert provision_mitogen.joined(stack) is None


def test_a_joined_hop_that_sudo_refuses_falls_back_and_an_ssh_failure_does_not() -> None:
    from mitogen.parent import EofError

    from provision.strategy_plugins import provision_mitogen

    def failure(text: str) -> tuple[type, BaseException, None]:
        return (EofError, EofError(f"EOF on stream; last 100 lines received:\n{text}"), None)

    assert provision_mitogen._refused_by_sudo(failure("sudo: a password is required"))
    assert provision_mitogen._refused_by_sudo(failure("sudo: sorry, you must have a tty to run sudo"))
    assert not provision_mitogen._refused_by_sudo(failure("ssh: connect to host 10.0.0.5 port 22: Connection refused"))
    assert not provision_mitogen._refused_by_sudo({"context": None})


def with_control_path_under_ansible(stack: list[dict[str, Any]], env: dict[str, str]) -> list[dict[str, Any]]:
    """provision_mitogen.with_control_path in a fresh Python whose Ansible config comes from env."""
    code = (
        "import json, sys; from provision.strategy_plugins import provision_mitogen as p; "
        "print(json.dumps(p.with_control_path(json.loads(sys.argv[1]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(stack)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)


def test_mitogens_ssh_gets_the_control_path_ansibles_ssh_plugin_would_use(tmp_path: Path) -> None:
    """ssh_args ask for ControlPersist; Mitogen passes no ControlPath (ssh then shares nothing): ours adds the
    path the ssh plugin would, in the directory it would make."""
    from provision.strategy_plugins import provision_mitogen

    env = {"ANSIBLE_CONFIG": str(paths.ANSIBLE_CFG), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp")}
    login, sudo = with_control_path_under_ansible([LOGIN, SUDO], env)
    assert login["kwargs"]["ssh_args"] == [*LOGIN["kwargs"]["ssh_args"], "-o", f"ControlPath={tmp_path}/cp/%C"]
    assert {**login, "kwargs": {**login["kwargs"], "ssh_args": LOGIN["kwargs"]["ssh_args"]}} == LOGIN
    assert sudo == SUDO
    assert (tmp_path / "cp").stat().st_mode & 0o777 == 0o700
    # A path of the user's own, or no ControlPersist: as they are.
    own = {**LOGIN, "kwargs": {**LOGIN["kwargs"], "ssh_args": ["-o", "ControlPersist=60", "-o", "ControlPath=/x/%C"]}}
    assert provision_mitogen.with_control_path([own]) == [own]
    plain = {**LOGIN, "kwargs": {**LOGIN["kwargs"], "ssh_args": ["-C"]}}
    assert provision_mitogen.with_control_path([plain, SUDO]) == [plain, SUDO]


def test_lab_ssh_uses_the_control_path_of_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`provision lab ssh` and provision_mitogen share a host's connection only while they name one socket: both
    take it from ansible.cfg (here one whose control_path is not the default)."""
    from provision.lab import hosts

    config = tmp_path / "ansible.cfg"
    config.write_text(
        f"[ssh_connection]\ncontrol_path_dir = {tmp_path}/sockets\ncontrol_path = %(directory)s/lab-%%h-%%p\n",
        encoding="utf-8",
    )
    (login,) = with_control_path_under_ansible([LOGIN], {"ANSIBLE_CONFIG": str(config)})
    monkeypatch.setattr(paths, "ANSIBLE_CFG", config)
    assert hosts.control_path() == f"{tmp_path}/sockets/lab-%h-%p"
    assert login["kwargs"]["ssh_args"][-2:] == ["-o", f"ControlPath={hosts.control_path()}"]
