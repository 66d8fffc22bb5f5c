"""Turn runner events into progress lines and the final recap.

Two ways to show a run. Per host (today's lines, and the only way up to TASK_OUTPUT_HOSTS hosts): one line per
task and host, as each result comes. Per task (above that, or asked for): a task's results are held until the task
is over for every host, then shown as one line with counts, the changed and failed hosts named, and each failure
below it exactly as the per-host line says it. `Progress` follows a run's events for both, and for the live status
line a terminal shows (`status_line`).

Pure functions: a typed event (provision.runner.TaskEvent) in, lines (or nothing) out. The CLI decides about
colour and the terminal.
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from provision.errors import UsageError
from provision.runner import HostStats, TaskEvent, TaskResult

STATUS_WIDTH = 12
MESSAGE_LIMIT = 600
# A failure may carry details, lines a role wants shown below it (playbooks/action_plugins/fail_with_details.py:
# the inference role puts the containers' last log lines there); shown indented below the failure line, at most
# this many.
DETAILS_LIMIT = 100

_RESULT_STATUS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_item_on_ok": "ok",
    "runner_item_on_failed": "failed",
    "runner_item_on_skipped": "skipped",
    "runner_on_async_poll": "polling",
    # An `until` loop's attempt: our modules and the weights role's progress poll put a progress line (bytes,
    # rate, ETA) in `summary`.
    "runner_retry": "waiting",
    # runner_on_async_ok/failed are followed by a runner_on_ok/failed for the same task: shown once.
}

# --output: "host" is one line per task and host, "task" one line per task with counts, "auto" chooses by the
# number of hosts the run targets: per task above TASK_OUTPUT_HOSTS. Four hosts' lines per task still read at a
# glance (the lab runs two); from five on, a task's lines stop fitting the eye and a fleet's scroll by unread.
OUTPUTS = ("auto", "task", "host")
TASK_OUTPUT_HOSTS = 4
# Hosts named on a task's line (its changed, failed, unreachable hosts) before "+K more".
NAMES_SHOWN = 5
# Distinct module summaries shown below a task's line, each with the hosts that said it, before "+K more".
SUMMARIES_SHOWN = 4

# A host's result for a task: the event that ends the task for it (a loop's items, retries and async polls come
# before it). Its status on a task line: one of these, or changed (ok with changes) or ignored (failed, tolerated).
_TASK_END = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}
# What starts a new task, or ends the last one: the previous task is over for every host.
_TASK_BOUNDARIES = (
    "playbook_on_task_start",
    "playbook_on_handler_task_start",
    "playbook_on_play_start",
    "playbook_on_stats",
)
# A task line's status (its colour) is its hosts' worst.
_SEVERITY = ("failed", "unreachable", "changed", "ignored", "ok", "skipped")


@dataclass(frozen=True)
class Line:
    status: str  # ok, changed, failed, ignored, unreachable, skipped, polling, waiting, play; output (-v)
    text: str

    def __str__(self) -> str:
        return self.text


def event_line(event: TaskEvent, host_width: int = 0) -> Line | None:
    """The line to show for one runner event, or None for events we do not show."""
    if event.kind == "playbook_on_play_start":
        return Line("play", f"PLAY {event.play}".rstrip())
    status = _RESULT_STATUS.get(event.kind)
    if status is None:
        return None
    res = event.result
    if event.kind in ("runner_on_ok", "runner_on_failed") and res.loop:
        return None  # a loop's summary: each item already had its own line
    if status == "ok" and res.changed:
        status = "changed"
    if status == "failed" and event.ignore_errors:
        status = "ignored"
    text = f"  {status:<{STATUS_WIDTH}} {event.host:<{host_width}}  {task_title(event)}"
    if event.kind.startswith("runner_item_on_") and not res.censored:
        text += f" ({_one_line(res.item_label)})"
    if status in ("failed", "ignored", "unreachable") and not res.censored:
        message = failure_message(res)
        if message:
            text += f": {message}"
        if status == "failed":
            text = text.rstrip() + "".join(f"\n      | {line}" for line in failure_details(res))
    elif res.summary and not res.censored:
        # A module's own account of what it did: the first line on the task's line, details indented below.
        first, *details = [line.strip() for line in res.summary.splitlines() if line.strip()]
        text += f": {first}" + "".join(f"\n      {line}" for line in details)
    return Line(status, text.rstrip())


def task_title(event: TaskEvent) -> str:
    """A task as the lines name it: "role : task", or the task alone outside a role."""
    return f"{event.role} : {event.task}" if event.role else event.task


def failure_message(res: TaskResult) -> str:
    """One line saying why a task failed: its msg, with the last line of stderr for a failed command.

    A role's argument check (validate_argument_spec) says only "Validation of arguments failed:" on its msg's
    first line; its argument_errors, each naming its variable, are the line instead.
    """
    if res.argument_errors:
        return _one_line("; ".join(" ".join(error.split()) for error in res.argument_errors))
    message = _one_line(res.msg).removeprefix("Task failed: ")
    stderr = [line for line in res.stderr.splitlines() if line.strip()]
    if stderr and (not message or message == "non-zero return code"):
        message = f"rc={res.rc}: {stderr[-1].strip()}"
    return _one_line(message)


def failure_details(res: TaskResult) -> list[str]:
    """The lines a role put beside a failure's msg (its `details`), the last DETAILS_LIMIT of them."""
    return [line.rstrip()[:MESSAGE_LIMIT] for line in res.details][-DETAILS_LIMIT:]


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= MESSAGE_LIMIT else first[: MESSAGE_LIMIT - 3] + "..."


def recap(stats: Mapping[str, HostStats]) -> list[str]:
    """One line per host, in the order ansible-playbook's PLAY RECAP uses."""
    width = max((len(host) for host in stats), default=0)
    return [
        f"{host:<{width}}  ok={s.ok} changed={s.changed} unreachable={s.unreachable} failed={s.failed} "
        f"skipped={s.skipped} rescued={s.rescued} ignored={s.ignored}"
        for host, s in stats.items()
    ]


def fleet_recap(stats: Mapping[str, HostStats]) -> list[str]:
    """The recap per task output ends with, instead of a line per host: how many hosts ended ok (nothing
    changed), changed, failed and unreachable, each host counted once (its worst), the failed and unreachable
    hosts named in full, the changed shortened."""
    ended = {host: _ended(s) for host, s in stats.items()}
    if not ended:
        return []
    counts = Counter(ended.values())
    lines = [
        f"{_hosts(len(ended))}: " + " ".join(f"{k}={counts[k]}" for k in ("ok", "changed", "failed", "unreachable"))
    ]
    for which in ("changed", "failed", "unreachable"):
        hosts = [host for host, e in ended.items() if e == which]
        if hosts:
            lines.append(f"  {which}: {shortened(hosts) if which == 'changed' else ', '.join(sorted(hosts))}")
    return lines


def _ended(s: HostStats) -> str:
    return "unreachable" if s.unreachable else "failed" if s.failed else "changed" if s.changed else "ok"


def _hosts(count: int) -> str:
    return f"{count} host" if count == 1 else f"{count} hosts"


# ---- per task output ----------------------------------------------------------------------------------------


def output_mode(requested: str, hosts: int) -> str:
    """What --output `requested` means for a run on `hosts` hosts: "task" or "host"."""
    if requested not in OUTPUTS:
        raise UsageError(f"--output {requested!r}: choose one of {', '.join(OUTPUTS)}")
    if requested == "auto":
        return "task" if hosts > TASK_OUTPUT_HOSTS else "host"
    return requested


def shortened(names: Iterable[str], shown: int = NAMES_SHOWN) -> str:
    """Host names, sorted: the first `shown`, then how many more."""
    ordered = sorted(names)
    more = f" +{len(ordered) - shown} more" if len(ordered) > shown else ""
    return ", ".join(ordered[:shown]) + more


@dataclass(frozen=True)
class TaskTally:
    """What a task's hosts did, once the task is over for all of them."""

    task: str  # as task_title names it
    statuses: Mapping[str, str]  # host -> ok, changed, failed, ignored, skipped or unreachable
    failures: tuple[Line, ...] = ()  # the per-host lines of its failures and unreachable hosts, as they came
    summaries: Mapping[str, str] = field(default_factory=dict)  # host -> its module's summary (ok or changed)


def task_lines(tally: TaskTally) -> list[Line]:
    """A task's line with its counts and the changed, failed and unreachable hosts named; below it the module
    summaries, each with the hosts that said it, and every failure as its per-host line says it."""
    if not tally.statuses:
        return []
    counts = Counter(tally.statuses.values())
    status = next(s for s in _SEVERITY if counts[s])
    text = f"  {status:<{STATUS_WIDTH}} {tally.task}  "
    text += " ".join(f"{k}={counts[k]}" for k in ("ok", "changed", "failed", "skipped", "unreachable"))
    if counts["ignored"]:
        text += f" ignored={counts['ignored']}"
    for which in ("changed", "failed", "unreachable"):
        hosts = [host for host, s in tally.statuses.items() if s == which]
        if hosts:
            text += f"  {which}: {shortened(hosts)}"
    lines = [Line(status, text)]
    groups: dict[str, list[str]] = {}
    for host, summary in sorted(tally.summaries.items()):
        groups.setdefault(summary, []).append(host)
    for summary, hosts in list(groups.items())[:SUMMARIES_SHOWN]:
        first, *details = [line.strip() for line in summary.splitlines() if line.strip()] or [""]
        lines.append(Line("summary", f"      {shortened(hosts)}: {first}" + "".join(f"\n        {d}" for d in details)))
    rest = [host for hosts in list(groups.values())[SUMMARIES_SHOWN:] for host in hosts]
    if rest:
        lines.append(Line("summary", f"      {_hosts(len(rest))} more said other things (--output host shows each)"))
    return lines + list(tally.failures)


@dataclass(frozen=True)
class Status:
    """Where a run stands, for the live status line."""

    task: str = ""  # the task running now, as task_title names it; "" between plays
    done: int = 0  # hosts that have a result for it
    hosts: int = 0  # hosts running it, as far as known: the play's hosts still in the run, and those that started it
    failed: int = 0  # hosts with a failed task or unreachable, so far in the run
    waiting: tuple[tuple[str, str], ...] = ()  # (host, its progress line) for hosts retrying the task (until)


def status_line(status: Status, elapsed: float, width: int) -> str:
    """The live status line: elapsed time, hosts done with the current task, hosts failed, the task; shorter than
    `width` (a line as wide as the terminal would wrap)."""
    parts = [_duration(elapsed)]
    if status.task and status.hosts:
        parts.append(f"{status.done}/{_hosts(status.hosts)}")
    if status.failed:
        parts.append(f"{status.failed} failed")
    parts.append(status.task)
    if len(status.waiting) == 1:
        host, progress = status.waiting[0]
        parts.append(f"{host}: {progress}" if progress else f"{host} waiting")
    elif status.waiting:
        parts.append(f"{len(status.waiting)} hosts waiting")
    text = "".join(c if c.isprintable() else " " for c in "  ".join(p for p in parts if p))
    limit = max(width - 1, 0)
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..." if limit > 3 else text[:limit]


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Progress:
    """Follows a run's events: the task running, the hosts done with it, the hosts failed so far.

    `feed` gives the lines to show for each event: per host (`per_task` false), each result's line as it comes;
    per task, a task's lines once it is over for every host (the next task or play starts, or the stats come:
    the linear strategy, ours, runs hosts task by task together), and `end` those of a run that stopped
    mid-task. `status` says where the run stands.
    """

    def __init__(self, per_task: bool, host_width: int = 0) -> None:
        self.per_task = per_task
        self.host_width = host_width
        self._task = ""
        self._statuses: dict[str, str] = {}
        self._failures: list[Line] = []
        self._summaries: dict[str, str] = {}
        self._waiting: dict[str, str] = {}
        self._started: set[str] = set()  # hosts that started the current task
        self._expected: set[str] = set()  # the play's hosts still in the run when the current task started
        self._play_hosts: set[str] = set()  # hosts that started a task of the current play
        self._failed: set[str] = set()

    def feed(self, event: TaskEvent) -> list[Line]:
        lines: list[Line] = []
        if event.kind in _TASK_BOUNDARIES:
            lines += self.end()
            if event.kind == "playbook_on_play_start":
                self._play_hosts = set()
            self._task = task_title(event) if "task_start" in event.kind else ""
            self._expected = self._play_hosts - self._failed
        elif event.kind == "runner_on_start":
            self._started.add(event.host)
            self._play_hosts.add(event.host)
        elif event.kind == "runner_retry":
            self._waiting[event.host] = "" if event.result.censored else _first_line(event.result.summary)
        self._record(event)
        line = event_line(event, self.host_width)
        if line is not None and (not self.per_task or line.status == "play"):
            lines.append(line)
        return lines

    def _record(self, event: TaskEvent) -> None:
        failure = event.kind in ("runner_on_failed", "runner_item_on_failed", "runner_on_unreachable")
        if failure and not event.ignore_errors:
            line = event_line(event, self.host_width)  # None for a loop's summary: its items had their lines
            if line is not None:
                self._failures.append(line)
        status = _TASK_END.get(event.kind)
        if status is None:
            return
        res = event.result
        if status == "ok" and res.changed:
            status = "changed"
        if status == "failed" and event.ignore_errors:
            status = "ignored"
        self._statuses[event.host] = status
        self._waiting.pop(event.host, None)
        if status in ("failed", "unreachable"):
            self._failed.add(event.host)
        if status in ("ok", "changed") and res.summary and not res.censored:
            self._summaries[event.host] = res.summary

    def end(self) -> list[Line]:
        """The current task's lines (per task), and forget it."""
        tally = TaskTally(self._task, self._statuses, tuple(self._failures), self._summaries)
        self._statuses, self._failures, self._summaries, self._waiting = {}, [], {}, {}
        self._started = set()
        return task_lines(tally) if self.per_task else []

    def status(self) -> Status:
        return Status(
            task=self._task,
            done=len(self._statuses),
            hosts=len(self._expected | self._started | set(self._statuses)),
            failed=len(self._failed),
            waiting=tuple(sorted(self._waiting.items())),
        )


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
