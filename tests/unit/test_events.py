"""Runner events become one readable line each; no_log results never show their contents."""

import json
from typing import Any

import library_modules

from provision import events, paths
from provision.runner import HostStats, TaskEvent, task_event


def event(kind: str, res: dict[str, Any] | None = None, **data: Any) -> TaskEvent:
    """The typed event runner.run hands on for this ansible-runner event."""
    event_data = {"host": "lab1", "task": "Write package mirror sources", "role": "base", **data}
    if res is not None:
        event_data["res"] = res
    return task_event({"event": kind, "event_data": event_data})


def text(ev: TaskEvent, width: int = 4) -> str:
    line = events.event_line(ev, width)
    assert line is not None
    return line.text


def test_ok_and_changed() -> None:
    assert text(event("runner_on_ok", {"changed": False})) == "  ok           lab1  base : Write package mirror sources"
    line = events.event_line(event("runner_on_ok", {"changed": True}), 4)
    assert line == events.Line("changed", "  changed      lab1  base : Write package mirror sources")


def test_host_column_is_padded_and_task_without_role_has_no_prefix() -> None:
    assert (
        text(event("runner_on_skipped", {}, role=""), width=6) == "  skipped      lab1    Write package mirror sources"
    )


def test_failed_shows_first_line_of_msg() -> None:
    ev = event("runner_on_failed", {"msg": "boom\nsecond line"})
    assert text(ev) == "  failed       lab1  base : Write package mirror sources: boom"


def test_a_failed_argument_check_names_the_variables_on_its_line() -> None:
    """validate_argument_spec's msg says only "Validation of arguments failed:" on its first line."""
    errors = [
        "argument 'inference_replicas' is of type str and we were unable to convert to int: \"'two'\" cannot be "
        "converted to an int",
        "value of nginx_upstream_method must be one of: least_conn, random, got: fastest",
    ]
    res = {"msg": "Validation of arguments failed:\n" + "\n".join(errors), "argument_errors": errors}
    assert text(event("runner_on_failed", res, task="Validating arguments")) == (
        "  failed       lab1  base : Validating arguments: " + "; ".join(errors)
    )


def test_failed_shows_its_details_indented() -> None:
    """A role's `details` (fail_with_details) are lines below the failure; a `---` in a msg is nothing special."""
    ev = event("runner_on_failed", {"msg": "deploy failed", "details": ["log line 1", "log line 2"]})
    assert text(ev) == (
        "  failed       lab1  base : Write package mirror sources: deploy failed"
        "\n      | log line 1\n      | log line 2"
    )
    conventional = event("runner_on_failed", {"msg": "deploy failed\nrolled back\n---\nlog line 1\nlog line 2"})
    assert text(conventional) == "  failed       lab1  base : Write package mirror sources: deploy failed"
    many = event("runner_on_failed", {"msg": "deploy failed", "details": [f"line {n}" for n in range(150)]})
    assert text(many).splitlines()[1:] == [f"      | line {n}" for n in range(50, 150)]


def test_failed_command_shows_stderr_instead_of_generic_msg() -> None:
    ev = event(
        "runner_on_failed",
        {"msg": "non-zero return code", "rc": 100, "stderr": "E: x\nE: Unable to locate\n"},
    )
    assert text(ev).endswith(": rc=100: E: Unable to locate")


def test_ignored_failure_has_its_own_status() -> None:
    line = events.event_line(event("runner_on_failed", {"msg": "nope"}, ignore_errors=True), 4)
    assert line is not None
    assert line.status == "ignored"
    assert line.text.startswith("  ignored      lab1")


def test_unreachable_message_is_truncated_to_one_short_line() -> None:
    ev = event("runner_on_unreachable", {"msg": "Failed to connect " + "x" * 5000, "unreachable": True})
    line = text(ev)
    assert line.startswith("  unreachable  lab1  base : Write package mirror sources: Failed to connect")
    assert line.endswith("...")
    assert len(line) < 700


def test_a_retry_shows_the_modules_progress_line() -> None:
    ev = event("runner_retry", {"summary": "512.0 MiB of 1.0 GiB (50%), 0/3 files, 80.0 MiB/s, ETA 6s", "attempts": 3})
    assert text(ev) == (
        "  waiting      lab1  base : Write package mirror sources: "
        "512.0 MiB of 1.0 GiB (50%), 0/3 files, 80.0 MiB/s, ETA 6s"
    )


def test_the_weights_progress_poll_shows_the_summary_of_the_progress_file_it_read() -> None:
    """The weights role's poll (action_plugins/weights_progress.py) reads the file on the host and says its summary
    as data; a raw command's output is never parsed here."""
    poll = library_modules.load(paths.ROLES / "weights/action_plugins/weights_progress.py")
    state = {"pid": 7, "done": 1, "total": 2, "summary": "1.0 GiB of 2.0 GiB (50%), 0/1 files, 20.0 MiB/s, ETA 51s"}
    running = poll.progress_of(json.dumps(state) + "\r\nalive\r\n")
    assert (running["started"], running["finished"]) == (True, False)
    ev = event("runner_retry", {**running, "attempts": 2})
    assert text(ev).endswith("Write package mirror sources: 1.0 GiB of 2.0 GiB (50%), 0/1 files, 20.0 MiB/s, ETA 51s")
    plain = event("runner_retry", {**poll.progress_of("not json\nalive\n"), "attempts": 2})
    assert text(plain).endswith("Write package mirror sources")
    raw = event("runner_retry", {"stdout": json.dumps(state) + "\r\n", "attempts": 2})
    assert text(raw).endswith("Write package mirror sources")
    assert poll.progress_of(json.dumps(state) + "\ngone\n")["finished"], "a pull whose pid is gone has ended"
    assert poll.progress_of(json.dumps({**state, "finished": True}) + "\nalive\n")["finished"]
    assert poll.progress_of("\ngone\n") == {"summary": "", "started": False, "finished": False, "progress": {}}


def test_a_modules_summary_shows_its_details_indented_below_the_task() -> None:
    ev = event("runner_on_ok", {"changed": True, "summary": "pulled 2 files\nqwen/a: from m1\nqwen/b: from m2"})
    assert text(ev).splitlines() == [
        "  changed      lab1  base : Write package mirror sources: pulled 2 files",
        "      qwen/a: from m1",
        "      qwen/b: from m2",
    ]


def test_no_log_result_shows_only_the_status_line() -> None:
    censored = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"
    for kind in ("runner_on_ok", "runner_on_failed", "runner_item_on_failed"):
        ev = event(kind, {"censored": censored, "msg": "password=hunter2", "item": "hunter2"})
        line = text(ev)
        assert "hunter2" not in line
        assert "hidden" not in line
        assert line.endswith("base : Write package mirror sources")


def test_loop_items_show_their_label_and_the_summary_is_not_repeated() -> None:
    item = event("runner_item_on_ok", {"changed": True, "item": {"big": "dict"}, "_ansible_item_label": "nginx"})
    assert text(item) == "  changed      lab1  base : Write package mirror sources (nginx)"
    plain = event("runner_item_on_skipped", {"item": "curl"})
    assert text(plain).endswith("(curl)")
    summary = event("runner_on_ok", {"results": [{}, {}], "msg": "All items completed"})
    assert events.event_line(summary) is None


def test_async_poll_and_play_start() -> None:
    assert text(event("runner_on_async_poll", {"started": 1, "finished": 0})).startswith("  polling      lab1")
    assert events.event_line(event("runner_on_async_ok", {"changed": True})) is None
    play = task_event({"event": "playbook_on_play_start", "event_data": {"name": "Prepare the base system"}})
    assert events.event_line(play) == events.Line("play", "PLAY Prepare the base system")


def test_other_events_are_not_shown() -> None:
    for kind in ("runner_on_start", "playbook_on_task_start", "verbose", "playbook_on_stats", None):
        assert events.event_line(task_event({"event": kind, "event_data": {}})) is None


def test_recap() -> None:
    stats = {
        "lab1": HostStats(ok=12, skipped=3),
        "lab10": HostStats(ok=2, changed=1, failed=1, unreachable=0, rescued=1, ignored=2),
    }
    assert events.recap(stats) == [
        "lab1   ok=12 changed=0 unreachable=0 failed=0 skipped=3 rescued=0 ignored=0",
        "lab10  ok=2 changed=1 unreachable=0 failed=1 skipped=0 rescued=1 ignored=2",
    ]
    assert events.recap({}) == []
