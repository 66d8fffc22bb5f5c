"""Runner events become one readable line each; no_log results never show their contents."""

import json
from typing import Any

import library_modules
import pytest

from provision import events, paths
from provision.errors import UsageError
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


# ---- per task output (fleets) -------------------------------------------------------------------------------


def test_auto_output_is_per_task_above_the_threshold_and_the_flag_wins() -> None:
    assert events.TASK_OUTPUT_HOSTS == 4
    assert events.output_mode("auto", 1) == "host"
    assert events.output_mode("auto", 4) == "host"
    assert events.output_mode("auto", 5) == "task"
    assert events.output_mode("auto", 200) == "task"
    assert events.output_mode("host", 200) == "host"
    assert events.output_mode("task", 1) == "task"
    with pytest.raises(UsageError, match="--output 'tasks': choose one of auto, task, host"):
        events.output_mode("tasks", 6)


def task_start(task: str = "Write package mirror sources", role: str = "base") -> TaskEvent:
    return task_event({"event": "playbook_on_task_start", "event_data": {"task": task, "role": role}})


def result(kind: str, host: str, res: dict[str, Any] | None = None, **data: Any) -> TaskEvent:
    return event(kind, res if res is not None else {}, host=host, **data)


def feed(progress: events.Progress, *evs: TaskEvent) -> list[str]:
    return [line.text for ev in evs for line in progress.feed(ev)]


def test_per_task_a_tasks_line_comes_when_it_is_over_for_every_host() -> None:
    progress = events.Progress(per_task=True, host_width=6)
    hosts = [f"lab{n}" for n in range(1, 7)]
    assert feed(progress, task_start(), *[event("runner_on_start", host=h) for h in hosts]) == []
    assert feed(progress, *[result("runner_on_ok", h, {"changed": h in ("lab2", "lab5")}) for h in hosts]) == []
    assert feed(progress, task_start("Install packages")) == [
        "  changed      base : Write package mirror sources  ok=4 changed=2 failed=0 skipped=0 unreachable=0"
        "  changed: lab2, lab5"
    ]
    assert feed(progress, *[result("runner_on_skipped", h) for h in hosts]) == []
    stats = task_event({"event": "playbook_on_stats", "event_data": {}})
    assert feed(progress, stats) == [
        "  skipped      base : Install packages  ok=0 changed=0 failed=0 skipped=6 unreachable=0"
    ]
    assert progress.end() == [], "a task's lines come once"


def test_per_task_failures_are_expanded_in_full_below_the_counts_as_their_per_host_lines() -> None:
    progress = events.Progress(per_task=True, host_width=5)
    failed = result("runner_on_failed", "lab3", {"msg": "deploy failed", "details": ["log line 1"]})
    gone = result("runner_on_unreachable", "lab9", {"msg": "Failed to connect", "unreachable": True})
    tolerated = result("runner_on_failed", "lab4", {"msg": "nope"}, ignore_errors=True)
    oks = [result("runner_on_ok", f"lab{n}", {"changed": True}) for n in (1, 2, 5, 6, 7, 8, 10)]
    assert feed(progress, task_start(), failed, gone, tolerated, *oks) == []
    (line, *below) = progress.end()
    assert line.status == "failed"
    assert line.text == (
        "  failed       base : Write package mirror sources  ok=0 changed=7 failed=1 skipped=0 unreachable=1"
        " ignored=1  changed: lab1, lab10, lab2, lab5, lab6 +2 more  failed: lab3  unreachable: lab9"
    )
    assert below == [events.event_line(failed, 5), events.event_line(gone, 5)]
    assert below[0] is not None and below[0].text.splitlines()[1] == "      | log line 1"


def test_per_task_a_loop_is_one_result_per_host_and_its_failed_items_are_expanded() -> None:
    progress = events.Progress(per_task=True, host_width=4)
    items = [
        result("runner_item_on_ok", "lab1", {"item": "curl", "changed": True}),
        result("runner_item_on_failed", "lab1", {"item": "nope", "msg": "No package matching 'nope'"}),
        result("runner_item_on_ok", "lab2", {"item": "curl"}),
    ]
    ends = [
        result("runner_on_failed", "lab1", {"results": [{}, {}], "msg": "One or more items failed"}),
        result("runner_on_ok", "lab2", {"results": [{}], "changed": False}),
    ]
    feed(progress, task_start(), *items, *ends)
    assert [line.text for line in progress.end()] == [
        "  failed       base : Write package mirror sources  ok=1 changed=0 failed=1 skipped=0 unreachable=0"
        "  failed: lab1",
        "  failed       lab1  base : Write package mirror sources (nope): No package matching 'nope'",
    ]


def test_per_task_module_summaries_are_said_once_with_the_hosts_that_said_them() -> None:
    progress = events.Progress(per_task=True)
    same = "nothing to pull, 2 models OK\nqwen/a: OK"
    said = [result("runner_on_ok", f"lab{n}", {"summary": same}) for n in range(1, 8)]
    said.append(result("runner_on_ok", "lab8", {"changed": True, "summary": "pulled 2 files"}))
    said.append(result("runner_on_ok", "lab9", {"censored": "hidden", "summary": "secret"}))
    feed(progress, task_start(), *said)
    assert [line.text for line in progress.end()][1:] == [
        "      lab1, lab2, lab3, lab4, lab5 +2 more: nothing to pull, 2 models OK\n        qwen/a: OK",
        "      lab8: pulled 2 files",
    ]
    many = [result("runner_on_ok", f"lab{n}", {"summary": f"took {n}s"}) for n in range(1, 7)]
    feed(progress, task_start(), *many)
    assert [line.text for line in progress.end()][1:] == [
        "      lab1: took 1s",
        "      lab2: took 2s",
        "      lab3: took 3s",
        "      lab4: took 4s",
        "      2 hosts more said other things (--output host shows each)",
    ]


def test_per_task_retries_and_polls_show_no_line_but_the_status_says_who_waits() -> None:
    progress = events.Progress(per_task=True)
    assert (
        feed(progress, task_start(), event("runner_on_start", host="lab1"), event("runner_on_start", host="lab2")) == []
    )
    waiting = result("runner_retry", "lab1", {"summary": "512.0 MiB of 1.0 GiB (50%)", "attempts": 1})
    assert feed(progress, waiting, result("runner_on_async_poll", "lab2", {"started": 1})) == []
    assert progress.status() == events.Status(
        task="base : Write package mirror sources", done=0, hosts=2, waiting=(("lab1", "512.0 MiB of 1.0 GiB (50%)"),)
    )
    feed(progress, result("runner_on_ok", "lab1", {}))
    assert progress.status().waiting == () and progress.status().done == 1


def test_per_task_play_lines_come_after_the_last_task_of_the_play_before() -> None:
    progress = events.Progress(per_task=True)
    feed(progress, task_start(), result("runner_on_ok", "lab1"))
    play = task_event({"event": "playbook_on_play_start", "event_data": {"name": "Harden sshd"}})
    assert feed(progress, play) == [
        "  ok           base : Write package mirror sources  ok=1 changed=0 failed=0 skipped=0 unreachable=0",
        "PLAY Harden sshd",
    ]


def test_per_host_lines_are_todays_and_the_status_follows_the_same_events() -> None:
    progress = events.Progress(per_task=False, host_width=4)
    feed(progress, task_start(), *[event("runner_on_start", host=h) for h in ("lab1", "lab2", "lab3")])
    assert feed(progress, result("runner_on_failed", "lab2", {"msg": "boom"})) == [
        "  failed       lab2  base : Write package mirror sources: boom"
    ]
    assert progress.status() == events.Status(task="base : Write package mirror sources", done=1, hosts=3, failed=1)
    feed(progress, result("runner_on_ok", "lab1"), result("runner_on_ok", "lab3"))
    # The next task: the failed host is out of the run, the others are expected before they start it.
    assert feed(progress, task_start("Install packages")) == []
    assert progress.status() == events.Status(task="base : Install packages", done=0, hosts=2, failed=1)


def test_the_status_line_fits_the_terminal_and_holds_no_control_character() -> None:
    status = events.Status(task="base : Install\tpackages", done=3, hosts=6, failed=1)
    assert events.status_line(status, 62, 80) == "1m02s  3/6 hosts  1 failed  base : Install packages"
    assert events.status_line(status, 62, 20) == "1m02s  3/6 hosts..."
    assert len(events.status_line(status, 62, 20)) == 19
    assert events.status_line(status, 3, 3) == "3s"
    assert events.status_line(events.Status(), 3725, 80) == "1h02m"
    one = events.Status(task="weights : Pull", done=0, hosts=1, waiting=(("lab1", "50%"),))
    assert events.status_line(one, 5, 80) == "5s  0/1 host  weights : Pull  lab1: 50%"
    many = events.Status(task="weights : Pull", done=0, hosts=9, waiting=(("lab1", "50%"), ("lab2", "")))
    assert events.status_line(many, 5, 80) == "5s  0/9 hosts  weights : Pull  2 hosts waiting"


def test_the_fleet_recap_counts_hosts_once_each_and_names_the_failed_in_full() -> None:
    stats = {f"lab{n}": HostStats(ok=9) for n in range(1, 4)}
    stats |= {f"gpu{n}": HostStats(ok=9, changed=2) for n in range(1, 8)}
    stats |= {"lab7": HostStats(ok=3, changed=1, failed=1), "lab8": HostStats(unreachable=1, failed=1)}
    assert events.fleet_recap(stats) == [
        "12 hosts: ok=3 changed=7 failed=1 unreachable=1",
        "  changed: gpu1, gpu2, gpu3, gpu4, gpu5 +2 more",
        "  failed: lab7",
        "  unreachable: lab8",
    ]
    assert events.fleet_recap({"lab1": HostStats(ok=1)}) == ["1 host: ok=1 changed=0 failed=0 unreachable=0"]
    assert events.fleet_recap({}) == []
