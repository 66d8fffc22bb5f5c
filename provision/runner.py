"""Run a playbook through ansible-runner: a typed request in, a typed result out.

This is the only module that imports ansible_runner, and it does so inside run().
"""

import contextlib
import importlib.util
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from provision import paths
from provision.errors import EnvironmentProblem, ExitCode, UsageError
from provision.tools import ansible_env, ansible_tool


@dataclass(frozen=True)
class RunRequest:
    inventory: Path
    playbook: str = "site.yml"
    limit: str | None = None
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    check: bool = False
    diff: bool = False
    # Extra variables end up on ansible-playbook's command line and in the artifacts on disk:
    # never put a secret here (use a 0600 file, ssh-agent or ansible-vault instead).
    extravars: Mapping[str, Any] = field(default_factory=dict)
    keep_artifacts: bool = False
    verbosity: int = 0
    # Same rule as extravars: environment variables are written to env/envvars in the private data dir.
    envvars: Mapping[str, str] = field(default_factory=dict)
    # The Ansible project to run; the repository's playbooks/ unless a test points elsewhere.
    project_dir: Path | None = None
    # How Ansible runs tasks: "mitogen" (one Python per host kept alive for the run; the default) or
    # "linear" (Ansible's own, a new interpreter per task). See README "Speed".
    strategy: str = "mitogen"


@dataclass(frozen=True)
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass(frozen=True)
class RunResult:
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    stats: dict[str, HostStats]
    artifacts_dir: Path | None  # the kept private data dir, when keep_artifacts was asked for


# playbook_on_stats key -> HostStats field
_STATS_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}


def cmdline(request: RunRequest) -> list[str]:
    """The ansible-playbook options a request turns into (inventory, playbook and extravars aside)."""
    args: list[str] = []
    if request.limit:
        args += ["--limit", request.limit]
    if request.tags:
        args += ["--tags", ",".join(request.tags)]
    if request.skip_tags:
        args += ["--skip-tags", ",".join(request.skip_tags)]
    if request.check:
        args.append("--check")
    if request.diff:
        args.append("--diff")
    return args


STRATEGIES = ("mitogen", "linear")
# ansible-core 2.19 warns on every run that third-party strategy plugins, Mitogen's only hook, are deprecated
# with no replacement planned. The README records that risk; the user can do nothing about it on a run, so the
# line is kept out of what they see (-v shows ansible-playbook's output).
STRATEGY_DEPRECATION = "Use of strategy plugins not included in ansible.builtin are deprecated"


def mitogen_strategy_dir() -> Path | None:
    """Where Mitogen's strategy plugins are, when Mitogen is installed with them; None otherwise.

    Found without importing Mitogen (its strategy module imports half of Ansible): only ansible-playbook
    loads it.
    """
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        plugins = Path(location) / "plugins" / "strategy"
        if (plugins / "mitogen_linear.py").is_file():
            return plugins
    return None


def strategy_env(strategy: str, note: Callable[[str], None]) -> dict[str, str]:
    """The variables that select the strategy; Mitogen falls back to Ansible's own, saying so in one line."""
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy == "linear":
        return {}
    plugins = mitogen_strategy_dir()
    if plugins is None:
        note(
            "Mitogen's strategy plugin is not installed (pip install 'provision' brings it); running with "
            "Ansible's stock strategy, which is slower"
        )
        return {}
    search = [str(plugins), *filter(None, [os.environ.get("ANSIBLE_STRATEGY_PLUGINS")])]
    return {
        "ANSIBLE_STRATEGY_PLUGINS": os.pathsep.join(search),
        "ANSIBLE_STRATEGY": "mitogen_linear",
    }


def envvars(request: RunRequest, note: Callable[[str], None] = lambda text: None) -> dict[str, str]:
    env = ansible_env()
    env.update(strategy_env(request.strategy, note))
    # ansible-runner turns host key checking off unless the environment says otherwise; keep the
    # ansible.cfg setting (on) unless the user's own environment overrides it.
    if "ANSIBLE_HOST_KEY_CHECKING" not in os.environ:
        env["ANSIBLE_HOST_KEY_CHECKING"] = "True"
    env.update(request.envvars)
    return env


def stats_from_event(event_data: Mapping[str, Any]) -> dict[str, HostStats]:
    """Per-host stats from a playbook_on_stats event's data (or ansible-runner's Runner.stats)."""
    counts: dict[str, dict[str, int]] = {}
    for key, attr in _STATS_KEYS.items():
        for host, count in (event_data.get(key) or {}).items():
            counts.setdefault(host, {})[attr] = int(count)
    for host in event_data.get("processed") or {}:
        counts.setdefault(host, {})
    return {host: HostStats(**values) for host, values in sorted(counts.items())}


def run(
    request: RunRequest,
    on_event: Callable[[dict[str, Any]], None],
    note: Callable[[str], None] = lambda text: None,
) -> RunResult:
    """Run the request's playbook; `on_event` sees every ansible-runner event, `note` gets lines for the user."""
    import ansible_runner
    import ansible_runner.exceptions

    ansible_tool("ansible-playbook")  # fail early, naming the tool, rather than with rc 127 later
    private_data_dir = Path(tempfile.mkdtemp(prefix="provision-"))  # mode 0700, in the system temp dir
    stats: dict[str, HostStats] = {}
    interrupted = False

    def handle_event(event: dict[str, Any]) -> bool:
        nonlocal stats
        if STRATEGY_DEPRECATION in str(event.get("stdout") or ""):
            kept = [line for line in event["stdout"].splitlines() if STRATEGY_DEPRECATION not in line]
            event = {**event, "stdout": "\n".join(kept).strip("\n")}
        if event.get("event") == "playbook_on_stats":
            stats = stats_from_event(event.get("event_data", {}))
        on_event(event)
        return True  # keep the event (ansible-runner writes it to the artifacts)

    def handle_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True

    # Ctrl-C sets a flag that ansible-runner polls; it then stops ansible-playbook and reports "canceled".
    # (Only the main thread may handle signals; elsewhere Ctrl-C stays the caller's business.)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, handle_sigint) if main_thread else None
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private_data_dir),
            project_dir=str(request.project_dir or paths.PLAYBOOKS),
            playbook=request.playbook,
            inventory=str(request.inventory.resolve()),
            cmdline=shlex.join(cmdline(request)) or None,
            extravars=dict(request.extravars),
            envvars=envvars(request, note),
            verbosity=request.verbosity or None,
            quiet=True,
            event_handler=handle_event,
            cancel_callback=lambda: interrupted and _stop_playbooks(),
            # ansible-runner would point the jsonfile fact cache into this temporary dir; leave the
            # cache to ansible.cfg so facts survive between runs.
            fact_cache_type="ansible.cfg",
            # How often ansible-runner polls cancel_callback: Ctrl-C takes effect within this time.
            settings={"pexpect_timeout": 0.5},
        )
    except ansible_runner.exceptions.AnsibleRunnerException as exc:
        raise EnvironmentProblem(f"ansible-runner could not run {request.playbook}: {exc}") from exc
    else:
        if not stats and runner.stats:
            stats = stats_from_event(runner.stats)
        status, rc = str(runner.status), int(runner.rc)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
        if not request.keep_artifacts:
            shutil.rmtree(private_data_dir, ignore_errors=True)
    return RunResult(
        status=status,
        rc=rc,
        stats=stats,
        artifacts_dir=private_data_dir if request.keep_artifacts else None,
    )


def _stop_playbooks(grace: float = 5.0) -> bool:
    """SIGTERM the ansible-playbook processes we started, and wait (up to `grace` s) for them to exit.

    ansible-runner cancels with SIGKILL to the process group, but ansible-core's workers each run in a
    session of their own (setsid), so a running task would outlive the cancel; on SIGTERM ansible-playbook
    stops its workers itself.  Returns True: the run is to be cancelled either way.
    """
    me = str(os.getpid())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        try:
            ours = fields[1] == me and b"ansible-playbook" in (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ours:
            pids.append(int(entry.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _stat_fields(pid)[:1] not in ([], ["Z"])]  # gone, or a zombie
        time.sleep(0.1)
    return True


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...]; [] when the process is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def outcome(result: RunResult) -> ExitCode:
    """Decide the exit code from the runner's status and the per-host stats, not from rc alone."""
    if result.status == "canceled":
        return ExitCode.INTERRUPTED
    if any(s.failed for s in result.stats.values()):
        return ExitCode.FAILED
    if any(s.unreachable for s in result.stats.values()):
        return ExitCode.UNREACHABLE
    if result.status != "successful":
        return ExitCode.FAILED
    return ExitCode.OK
