"""Run one of our playbooks from Python, as `provision up` does: a typed request in (runner.RunRequest), a typed
outcome out (PlayOutcome).

The library's entry point for a run; the CLI is one caller of it. It checks the request before anything is
contacted (inventory, --limit, tags, role variables), holds the host locks of a run that may change hosts, hands
its lines to `progress` (per host, or per task on a fleet: provision.events) and where it stands to `status`, and
decides the outcome in one place: the exit code, the failed and
unreachable hosts, and a one-line message. It never imports Click.
"""

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from provision import paths
from provision.errors import ExitCode, UsageError
from provision.events import Line, Status
from provision.runner import STOP_SIGNALS, HostStats, RunRequest, RunResult, TaskEvent

if TYPE_CHECKING:
    from provision.inventory import Inventory


@dataclass(frozen=True)
class PlayOutcome:
    code: ExitCode
    failed: tuple[str, ...]  # hosts with a failed task
    unreachable: tuple[str, ...]
    message: str  # one line saying what went wrong and what to do; "" when code is OK
    stats: Mapping[str, HostStats]  # per host, in the order of ansible-playbook's recap
    artifacts_dir: Path | None = None  # the kept private data dir, when keep_artifacts was asked for
    signal: int | None = None  # the signal (SIGINT, SIGTERM, SIGHUP) that stopped the run, if one came
    # How the run was shown, so the recap matches: "host" (a line per task and host, or ansible-playbook's own
    # output with -v) or "task" (a line per task; provision.events.output_mode).
    output: str = "host"


def run(
    request: RunRequest,
    progress: Callable[[Line], None] = lambda line: None,
    note: Callable[[str], None] = lambda text: None,
    on_event: Callable[[TaskEvent], None] = lambda event: None,
    lock_hosts: bool = True,
    output: str = "auto",
    status: Callable[[Status], None] = lambda status: None,
    checked: "Inventory | None" = None,
) -> PlayOutcome:
    """Run the request's playbook; `progress` gets its lines: per `output` ("host": a line per task and host;
    "task": a line per task with counts; "auto": per task above events.TASK_OUTPUT_HOSTS targeted hosts), or
    ansible-playbook's own output when the request's verbosity is above 0. `note` gets lines about the run itself
    (a wait for a host lock, the strategy), `on_event` every event (for callers that collect results), `status`
    where the run stands after each event (for a live status line).

    With `lock_hosts` (and not a check run), the run first waits until no other run from this controller that
    may change them holds its hosts (provision.hostlock). `checked` is the inventory of a caller that has run
    `check` already (provision.batches, once for all its runs): its runs skip the checks and the loading.
    """
    from provision import events, hostlock, inventory, runner

    if checked is None:
        inv, hosts = check(request)
    else:
        inv, hosts = checked, (checked.select(request.limit) if request.limit else checked.hosts)
    named = inventory.controller_env_names(inv, dict(request.extravars))
    request = replace(
        request, inventory=inv.path, controller_env=tuple(dict.fromkeys((*request.controller_env, *named)))
    )
    mode = "host" if request.verbosity else events.output_mode(output, len(hosts))
    tracker = events.Progress(per_task=mode == "task", host_width=max(len(h) for h in inv.hosts))

    def show(event: TaskEvent) -> None:
        on_event(event)
        lines = tracker.feed(event)
        status(tracker.status())
        if request.verbosity:
            if event.stdout:
                progress(Line("output", event.stdout))
            return
        for line in lines:
            progress(line)

    locks = {}
    if lock_hosts and not request.check:
        locks = {host: hostlock.address(host, inv.hostvars.get(host, {})) for host in hosts}
    with hostlock.hold(locks, note=note):
        result = runner.run(request, on_event=show, note=note)
    for line in tracker.end():  # a run stopped mid-task: what its hosts did so far
        progress(line)
    return replace(outcome(result), output=mode)


def check(request: RunRequest) -> tuple["Inventory", tuple[str, ...]]:
    """What a run checks before anything is contacted (tags, --limit, role variables): the inventory and the
    hosts the request selects, or a UsageError."""
    from provision import argcheck, inventory

    playbook = (request.project_dir or paths.PLAYBOOKS) / request.playbook
    if request.tags or request.skip_tags:  # the tags of the playbook's whole project (ours: SITE_PLAYBOOK's)
        known = inventory.known_tags(playbook if request.project_dir else paths.SITE_PLAYBOOK)
        inventory.check_tags(request.tags, request.skip_tags, known)
    inv, hosts = limited_inventory(request.inventory, request.limit)
    argcheck.preflight(inv, playbook, limit=request.limit, skip_tags=request.skip_tags, extravars=request.extravars)
    return inv, hosts


def limited_inventory(path: Path, limit: str | None) -> tuple["Inventory", tuple[str, ...]]:
    """The inventory at `path` and the hosts `limit` selects (all without one); a limit that is empty or has a term
    that selects nothing is a UsageError. Loading runs ansible-inventory: the slow check, so it comes last."""
    from provision import inventory

    if limit is not None and not limit.strip():
        raise UsageError("--limit is empty; name hosts or groups, e.g. --limit lab1,lab2")
    inv = inventory.load_inventory(path)
    if limit is None:
        return inv, tuple(inv.hosts)
    inventory.check_limit(inv, limit)
    return inv, tuple(inv.select(limit))


def outcome(result: RunResult) -> PlayOutcome:
    """Decide a run's outcome from the runner's status and the per-host stats, not from rc alone."""
    failed = tuple(sorted(host for host, s in result.stats.items() if s.failed))
    unreachable = tuple(sorted(host for host, s in result.stats.items() if s.unreachable))
    if result.signal is not None:
        code = STOP_SIGNALS.get(signal.Signals(result.signal), ExitCode.INTERRUPTED)
    elif result.status == "canceled":
        code = ExitCode.INTERRUPTED
    elif failed:
        code = ExitCode.FAILED
    elif unreachable:
        code = ExitCode.UNREACHABLE
    elif result.status != "successful":
        code = ExitCode.FAILED
    else:
        code = ExitCode.OK
    return PlayOutcome(
        code=code,
        failed=failed,
        unreachable=unreachable,
        message=_message(code, result, failed, unreachable),
        stats=result.stats,
        artifacts_dir=result.artifacts_dir,
        signal=result.signal,
    )


def _message(code: ExitCode, result: RunResult, failed: tuple[str, ...], unreachable: tuple[str, ...]) -> str:
    if code is ExitCode.OK:
        return ""
    if result.signal is not None and code is not ExitCode.INTERRUPTED:
        return (
            f"stopped by {signal.Signals(result.signal).name}; hosts may be half-provisioned, run `provision up` again"
        )
    if code is ExitCode.INTERRUPTED:
        return "interrupted; hosts may be half-provisioned, run `provision up` again"
    if code is ExitCode.UNREACHABLE:
        return f"unreachable: {', '.join(unreachable)}; check ansible_host, ansible_port and ssh access"
    if failed:
        also = f"; unreachable: {', '.join(unreachable)}" if unreachable else ""
        return f"failed on {', '.join(failed)}{also}"
    return f"ansible-playbook ended with status {result.status} (rc={result.rc}); rerun with -v to see why"
