"""Turn runner events into progress lines and the final per-host recap.

Pure functions: a typed event (provision.runner.TaskEvent) in, a line (or nothing) out. The CLI decides about colour.
"""

from collections.abc import Mapping
from dataclasses import dataclass

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
    text = f"  {status:<{STATUS_WIDTH}} {event.host:<{host_width}}  "
    text += f"{event.role} : {event.task}" if event.role else event.task
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
