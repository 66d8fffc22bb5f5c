"""Where the suite's time goes, printed at its end: each directory of fast tests, each integration module, and the
lab's own phases (VM starts, image builds) that the integration fixtures record in labtools.PHASES."""

from __future__ import annotations

import sys
import time

import pytest

_spans: dict[str, list[float]] = {}  # a directory (unit/meta/golden) or an integration module -> [first, last]


def _group(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return path if "/integration/" in f"/{path}" else path.rsplit("/", 1)[0]


def pytest_runtest_logstart(nodeid: str) -> None:
    _spans.setdefault(_group(nodeid), [time.monotonic(), time.monotonic()])


def pytest_runtest_logfinish(nodeid: str) -> None:
    _spans[_group(nodeid)][1] = time.monotonic()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _spans:
        return
    terminalreporter.section("phase times")
    for group, (first, last) in _spans.items():
        terminalreporter.write_line(f"{last - first:8.1f} s  {group}")
    labtools = sys.modules.get("labtools")
    for name, seconds in getattr(labtools, "PHASES", {}).items():
        terminalreporter.write_line(f"{seconds:8.1f} s    of which: {name}")
