"""Where the suite's time goes, printed at its end: each directory of fast tests, each integration module, and the
lab's own phases (VM starts, image builds) that the integration fixtures record in labtools.PHASES."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

_spans: dict[str, list[float]] = {}  # a directory (unit/meta/golden) or an integration module -> [first, last]
_cpu: dict[str, list[tuple[int, int]]] = {}  # the same groups -> [(busy, total) jiffies at first, at last]


def _cpu_jiffies() -> tuple[int, int]:
    """The machine's CPU time so far, busy and in all: how much of it a phase used says whether it waited on
    something (a guest's network, a timeout) or had every core busy."""
    with open("/proc/stat") as stat:
        fields = [int(n) for n in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _group(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return path if "/integration/" in f"/{path}" else path.rsplit("/", 1)[0]


def pytest_runtest_logstart(nodeid: str) -> None:
    _spans.setdefault(_group(nodeid), [time.monotonic(), time.monotonic()])
    _cpu.setdefault(_group(nodeid), [_cpu_jiffies(), _cpu_jiffies()])


def pytest_runtest_logfinish(nodeid: str) -> None:
    _spans[_group(nodeid)][1] = time.monotonic()
    _cpu[_group(nodeid)][1] = _cpu_jiffies()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _spans:
        return
    terminalreporter.section("phase times")
    for group, (first, last) in _spans.items():
        (busy0, total0), (busy1, total1) = _cpu[group]
        busy = f"{100 * (busy1 - busy0) / (total1 - total0):3.0f}% CPU busy" if total1 > total0 else ""
        terminalreporter.write_line(f"{last - first:8.1f} s  {group:<44} {busy}")
    labtools = sys.modules.get("labtools")
    for name, seconds in getattr(labtools, "PHASES", {}).items():
        terminalreporter.write_line(f"{seconds:8.1f} s    of which: {name}")
    timings = os.environ.get("PROVISION_TEST_TIMINGS", "")
    if timings and os.path.exists(timings):  # one line per provision call the integration tests made
        from testkit.lab import timed_calls

        with open(timings) as log:
            calls = timed_calls(log)
        terminalreporter.section(f"slowest provision calls (all {len(calls)} in {timings})")
        for seconds, call in calls[:15]:
            terminalreporter.write_line(f"{seconds:7.1f}s  {call}"[:160])


@pytest.fixture(autouse=True)
def signals_as_at_a_terminal() -> Iterator[None]:
    """Ctrl-C and a hang-up reach the tests, and the processes they start, as they reach a user's terminal.

    A suite started in the background of a non-interactive shell (`cmd &`) inherits SIGINT ignored, and under
    nohup SIGHUP too; provision keeps a signal its caller ignored ignored, so the signal tests would test that
    instead. Exec resets a handled signal to its default in the child, but keeps an ignored one ignored.
    """
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.fixture(scope="session")
def require_promtool() -> str:
    """promtool's path; fails (never skips) without it: the alert rules' unit tests must run wherever the suite does."""
    import shutil

    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run scripts/setup.sh (Debian package prometheus)", pytrace=False)
    return found
