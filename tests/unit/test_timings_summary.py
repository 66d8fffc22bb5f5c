"""The suite's summary of provision calls reads the shared PROVISION_TEST_TIMINGS file as lanes leave it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit.lab import Lab, timed_calls


def test_calls_come_slowest_first() -> None:
    lines = ["   12.5s  provision up -i inv\n", "  301.0s  provision lab up --hosts 2\n"]
    assert timed_calls(lines) == [(301.0, "provision lab up --hosts 2"), (12.5, "provision up -i inv")]


def test_blank_and_cut_short_lines_are_left_out() -> None:
    """Two lanes appending at once can leave an empty line or half of one; the summary must still print."""
    lines = ["\n", "   3.0s  provision test -i inv\n", "   4", "s  provision\n", "  ", "  7.0s  provision up\n"]
    assert timed_calls(lines) == [(7.0, "provision up"), (3.0, "provision test -i inv")]


def test_a_call_with_a_multi_line_argument_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script passed to `lab ssh` spans lines; the timings file still gets one line for the call."""
    timings = tmp_path / "timings"
    monkeypatch.setenv("PROVISION_TEST_TIMINGS", str(timings))
    Lab(tmp_path / "inventory", tmp_path / "state", dict(os.environ)).provision("--version", "try:\n    pass\n")
    lines = timings.read_text().splitlines()
    assert len(lines) == 1, lines
    assert [call for _, call in timed_calls(lines)] == ["provision --version try:\\n    pass\\n"]
