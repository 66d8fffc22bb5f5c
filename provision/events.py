"""Turn ansible-runner events into progress lines and the final per-host recap.

Pure functions: an event dict in, a line (or nothing) out. The CLI decides about colour.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provision.runner import HostStats

STATUS_WIDTH = 12
MESSAGE_LIMIT = 600
# A failure message may carry details after a line of three dashes (the inference role puts the container's
# last log lines there); they are shown indented below the failure line, at most this many.
DETAILS_SEPARATOR = "---"
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
    # An `until` loop's attempt: our modules put a progress line (bytes, rate, ETA) in `summary`, or a raw
    # poll prints the JSON progress file they write, which has a `summary` too.
    "runner_retry": "waiting",
    # runner_on_async_ok/failed are followed by a runner_on_ok/failed for the same task: shown once.
}


@dataclass(frozen=True)
class Line:
    status: str  # ok, changed, failed, ignored, unreachable, skipped, polling, waiting, play
    text: str

    def __str__(self) -> str:
        return self.text


def event_line(event: Mapping[str, Any], host_width: int = 0) -> Line | None:
    """The line to show for one runner event, or None for events we do not show."""
    kind = str(event.get("event"))
    data: Mapping[str, Any] = event.get("event_data") or {}
    if kind == "playbook_on_play_start":
        return Line("play", f"PLAY {data.get('name') or data.get('play') or ''}".rstrip())
    status = _RESULT_STATUS.get(kind)
    if status is None:
        return None
    res: Mapping[str, Any] = data.get("res") or {}
    if kind in ("runner_on_ok", "runner_on_failed") and isinstance(res.get("results"), list):
        return None  # a loop's summary: each item already had its own line
    censored = "censored" in res
    if status == "ok" and res.get("changed"):
        status = "changed"
    if status == "failed" and data.get("ignore_errors"):
        status = "ignored"
    task = str(data.get("task") or "").strip()
    role = str(data.get("role") or "").strip()
    text = f"  {status:<{STATUS_WIDTH}} {data.get('host', '')!s:<{host_width}}  "
    text += f"{role} : {task}" if role else task
    if kind.startswith("runner_item_on_") and not censored:
        text += f" ({_item_label(res)})"
    if status in ("failed", "ignored", "unreachable") and not censored:
        message = failure_message(res)
        if message:
            text += f": {message}"
        if status == "failed":
            text = text.rstrip() + "".join(f"\n      | {line}" for line in failure_details(res))
    elif (summary := res.get("summary") or (status == "waiting" and _polled_summary(res))) and not censored:
        # A module's own account of what it did: the first line on the task's line, details indented below.
        first, *details = [line.strip() for line in str(summary).splitlines() if line.strip()]
        text += f": {first}" + "".join(f"\n      {line}" for line in details)
    return Line(status, text.rstrip())


def _polled_summary(res: Mapping[str, Any]) -> str:
    """The `summary` of a JSON progress file a raw poll printed as its first line, or ""."""
    first = (str(res.get("stdout") or "").strip().splitlines() or [""])[0]
    try:
        state = json.loads(first)
    except ValueError:
        return ""
    return str(state.get("summary") or "") if isinstance(state, dict) else ""


def _item_label(res: Mapping[str, Any]) -> str:
    label = res.get("_ansible_item_label", res.get("item", ""))
    return _one_line(str(label))


def failure_message(res: Mapping[str, Any]) -> str:
    """One line saying why a task failed: its msg, with the last line of stderr for a failed command.

    A role's argument check (validate_argument_spec) says only "Validation of arguments failed:" on its msg's
    first line; its argument_errors, each naming its variable, are the line instead.
    """
    errors = res.get("argument_errors")
    if isinstance(errors, list) and errors:
        return _one_line("; ".join(" ".join(str(error).split()) for error in errors))
    message = _one_line(str(res.get("msg") or "")).removeprefix("Task failed: ")
    stderr = [line for line in str(res.get("stderr") or "").splitlines() if line.strip()]
    if stderr and (not message or message == "non-zero return code"):
        message = f"rc={res.get('rc')}: {stderr[-1].strip()}"
    return _one_line(message)


def failure_details(res: Mapping[str, Any]) -> list[str]:
    """The lines after a `---` line in a failure's msg (none for ordinary messages)."""
    lines = str(res.get("msg") or "").splitlines()
    if DETAILS_SEPARATOR not in (line.strip() for line in lines):
        return []
    start = [line.strip() for line in lines].index(DETAILS_SEPARATOR) + 1
    details = [line.rstrip()[:MESSAGE_LIMIT] for line in lines[start:]]
    return details[-DETAILS_LIMIT:]


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
