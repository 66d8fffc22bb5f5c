"""Run a playbook through ansible-runner: a typed request in, a typed result out.

This is the only module that imports ansible_runner, and it does so inside run().
"""

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
    # Controller environment variables the playbooks read by name (weights_token_env): they reach
    # ansible-playbook besides the allow-list, and their values are blanked in kept artifacts.
    controller_env: tuple[str, ...] = ()


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
    signal: int | None = None  # the signal (SIGINT, SIGTERM, SIGHUP) that stopped the run, if one came


@dataclass(frozen=True)
class TaskResult:
    """What a task's module returned, as far as provision reads it (Ansible's `res`, typed)."""

    changed: bool = False
    censored: bool = False  # no_log: the result's contents were withheld, and nothing else is known
    msg: str = ""
    stderr: str = ""
    rc: int | None = None
    # Our modules' own account of what they did: a first line, details on the lines below it.
    summary: str = ""
    # Lines a role wants shown below a failure (the container's or the unit's last log lines).
    details: tuple[str, ...] = ()
    # Which step of a guarded change failed, where a role says (the ssh role: guard, check, other).
    stage: str = ""
    # validate_argument_spec's errors, each naming its variable.
    argument_errors: tuple[str, ...] = ()
    item_label: str = ""  # a loop item's label
    loop: bool = False  # the summary of a loop: each item had its own event
    # Structured output of our own modules: weights_pull's per-model report, host_doctor's readings.
    report: Mapping[str, Any] | None = None
    readings: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TaskEvent:
    """One ansible-runner event, typed: what happened, on which host, in which task, with what result."""

    kind: str  # ansible-runner's event name: runner_on_ok, runner_on_failed, runner_retry, playbook_on_play_start, ...
    host: str = ""
    task: str = ""
    role: str = ""
    play: str = ""  # the play's name (playbook_on_play_start)
    ignore_errors: bool = False
    stdout: str = ""  # ansible-playbook's own output for this event (what -v shows)
    result: TaskResult = field(default_factory=TaskResult)


def task_event(event: Mapping[str, Any]) -> TaskEvent:
    """The typed form of an ansible-runner event dict."""
    data: Mapping[str, Any] = event.get("event_data") or {}
    return TaskEvent(
        kind=str(event.get("event") or ""),
        host=str(data.get("host") or ""),
        task=str(data.get("task") or "").strip(),
        role=str(data.get("role") or "").strip(),
        play=str(data.get("name") or data.get("play") or ""),
        ignore_errors=bool(data.get("ignore_errors")),
        stdout=str(event.get("stdout") or ""),
        result=task_result(data.get("res") or {}),
    )


def task_result(res: Mapping[str, Any]) -> TaskResult:
    """The typed form of a module's result (`res`); a censored (no_log) one keeps only its status."""
    if not isinstance(res, Mapping):
        return TaskResult()
    if "censored" in res:
        return TaskResult(changed=bool(res.get("changed")), censored=True)
    errors = res.get("argument_errors")
    details = res.get("details")
    rc = res.get("rc")
    return TaskResult(
        changed=bool(res.get("changed")),
        msg=str(res.get("msg") or ""),
        stderr=str(res.get("stderr") or ""),
        rc=rc if isinstance(rc, int) else None,
        summary=str(res.get("summary") or ""),
        details=tuple(str(line) for line in details) if isinstance(details, list) else (),
        stage=str(res.get("stage") or ""),
        argument_errors=tuple(str(error) for error in errors) if isinstance(errors, list) else (),
        item_label=str(res.get("_ansible_item_label", res.get("item", ""))),
        loop=isinstance(res.get("results"), list),
        report=res["report"] if isinstance(res.get("report"), Mapping) else None,
        readings=res["readings"] if isinstance(res.get("readings"), Mapping) else None,
    )


# Signals that stop a run the way Ctrl-C does, and the exit code each gives (128 + the signal's number).
STOP_SIGNALS = {
    signal.SIGINT: ExitCode.INTERRUPTED,
    signal.SIGTERM: ExitCode.TERMINATED,
    signal.SIGHUP: ExitCode.HANGUP,
}

# What ansible-playbook gets from the controller's environment; nothing else does (ansible-runner writes the
# environment it starts ansible-playbook with into the artifacts, and local tasks see it). Ansible's own
# settings (the vault password file's included), the locale it insists on, the user and home that `~` and
# remote_user come from, and the ssh-agent and Kerberos credentials ssh uses.
ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSH_AUTH_SOCK", "KRB5CCNAME"}
)
ENV_PREFIXES = ("ANSIBLE_", "LC_")


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
PROVISION_STRATEGY_DIR = Path(__file__).parent / "strategy_plugins"
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
    # provision_mitogen is Mitogen's mitogen_linear, connecting a little less (provision/strategy_plugins).
    search = [str(PROVISION_STRATEGY_DIR), str(plugins), *filter(None, [os.environ.get("ANSIBLE_STRATEGY_PLUGINS")])]
    return {
        "ANSIBLE_STRATEGY_PLUGINS": os.pathsep.join(search),
        "ANSIBLE_STRATEGY": "provision_mitogen",
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


def allowed_env(
    env: Mapping[str, str], controller_env: Mapping[str, str], extra: tuple[str, ...] = ()
) -> dict[str, str]:
    """`env` without what it inherited from `controller_env` outside the allow-list (and the `extra` names).

    A variable whose value differs from the controller's was set on purpose (by us or ansible-runner): it stays.
    """
    return {
        name: value
        for name, value in env.items()
        if controller_env.get(name) != value or name in ENV_NAMES or name in extra or name.startswith(ENV_PREFIXES)
    }


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
    on_event: Callable[[TaskEvent], None],
    note: Callable[[str], None] = lambda text: None,
) -> RunResult:
    """Run the request's playbook; `on_event` sees every ansible-runner event, typed; `note` gets lines for the user."""
    import ansible_runner.exceptions
    import ansible_runner.interface

    ansible_tool("ansible-playbook")  # fail early, naming the tool, rather than with rc 127 later
    stats: dict[str, HostStats] = {}

    def handle_event(event: dict[str, Any]) -> bool:
        nonlocal stats
        if STRATEGY_DEPRECATION in str(event.get("stdout") or ""):
            kept = [line for line in event["stdout"].splitlines() if STRATEGY_DEPRECATION not in line]
            event = {**event, "stdout": "\n".join(kept).strip("\n")}
        if event.get("event") == "playbook_on_stats":
            stats = stats_from_event(event.get("event_data", {}))
        on_event(task_event(event))
        return True  # keep the event (ansible-runner writes it to the artifacts)

    env = envvars(request, note)
    fact_cache = _private_fact_cache(env)
    # The signal handlers go in before the private dir exists and come out after it is gone.
    with stop_signals() as stop, _umask(0o077):  # what ansible-playbook writes here (facts) is ours alone
        private_data_dir = Path(tempfile.mkdtemp(prefix="provision-"))  # mode 0700, in the system temp dir
        try:
            runner = ansible_runner.interface.init_runner(
                private_data_dir=str(private_data_dir),
                project_dir=str(request.project_dir or paths.PLAYBOOKS),
                playbook=request.playbook,
                inventory=str(request.inventory.resolve()),
                cmdline=shlex.join(cmdline(request)) or None,
                extravars=dict(request.extravars),
                envvars=env,
                verbosity=request.verbosity or None,
                quiet=True,
                event_handler=handle_event,
                cancel_callback=lambda: stop.signum is not None and _stop_playbooks(),
                # ansible-runner would point the jsonfile fact cache into this temporary dir; leave the
                # cache to ansible.cfg so facts survive between runs.
                fact_cache_type="ansible.cfg",
                # How often ansible-runner polls cancel_callback: a stop signal takes effect within this time.
                settings={"pexpect_timeout": 0.5},
            )
            # ansible-runner seeds the environment with all of ours; keep only what Ansible and ssh need.
            runner.config.env = allowed_env(runner.config.env, os.environ, (*env, *request.controller_env))
            runner.run()
            if not stats and runner.stats:  # read from the artifacts, which are about to go
                stats = stats_from_event(runner.stats)
        except ansible_runner.exceptions.AnsibleRunnerException as exc:
            raise EnvironmentProblem(f"ansible-runner could not run {request.playbook}: {exc}") from exc
        finally:
            _private_fact_cache(env, fact_cache)  # ansible-core writes each fact file 0644
            if request.keep_artifacts:
                _blank_env_values(private_data_dir, request.controller_env)
            else:
                shutil.rmtree(private_data_dir, ignore_errors=True)
    return RunResult(
        status=str(runner.status),
        rc=int(runner.rc),
        stats=stats,
        artifacts_dir=private_data_dir if request.keep_artifacts else None,
        signal=stop.signum,
    )


class Stop:
    signum: int | None = None  # the first stop signal that came


@contextlib.contextmanager
def stop_signals() -> Iterator[Stop]:
    """Ctrl-C, SIGTERM (a CI timeout) and SIGHUP (a closed terminal) only set a flag while this lasts.

    ansible-runner polls the flag (cancel_callback), then stops ansible-playbook and reports "canceled".
    Only the main thread may handle signals; elsewhere they stay the caller's business.
    """
    stop = Stop()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.signum = stop.signum or signum

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            # An ignored signal stays ignored: nohup ignores SIGHUP, a shell ignores SIGINT for background jobs.
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _private_fact_cache(env: Mapping[str, str], directory: Path | None = None) -> Path | None:
    """Make the jsonfile fact cache that ansible.cfg (or the environment) names 0700, its files 0600.

    Facts describe hosts (addresses, users, mounts); the jsonfile plugin would create the directory 0755
    and writes each file 0644 whatever the umask, so this runs before a run and again after it.
    """
    if directory is None:
        where = env.get("ANSIBLE_CACHE_PLUGIN_CONNECTION") or os.environ.get("ANSIBLE_CACHE_PLUGIN_CONNECTION")
        config = env.get("ANSIBLE_CONFIG")
        if not where and config:
            where = paths.ansible_setting(config, "defaults", "fact_caching_connection")
        if not where:
            return None
        directory = Path(where).expanduser()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        for entry in directory.iterdir():
            if entry.is_file() and not entry.is_symlink():
                entry.chmod(entry.stat().st_mode & 0o700)
    except OSError as exc:
        raise EnvironmentProblem(f"fact cache {directory}: {exc.strerror}; fix fact_caching_connection") from exc
    return directory


def _blank_env_values(private_data_dir: Path, names: tuple[str, ...]) -> None:
    """Blank the named variables' values in the environment ansible-runner recorded (artifacts/*/command)."""
    for command in private_data_dir.glob("artifacts/*/command"):
        with contextlib.suppress(OSError, ValueError):
            recorded = json.loads(command.read_text(encoding="utf-8"))
            env = recorded.get("env") or {}
            if any(name in env for name in names):
                env.update({name: "(not recorded)" for name in names if name in env})
                command.write_text(json.dumps(recorded, ensure_ascii=False), encoding="utf-8")


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
