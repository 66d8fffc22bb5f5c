"""provision.play, the library's entry point for a run: a request in, progress lines out, one outcome, no Click."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from local_play import PLAYBOOK

from provision import paths, play
from provision.errors import ExitCode, UsageError
from provision.runner import HostStats, RunRequest, RunResult
from provision.weights import verify

Write = Callable[[str, str], Path]


@pytest.fixture
def mixed(write: Write) -> tuple[Path, Path]:
    """A project, and an inventory of a host that runs it (local1) and one nobody answers for (gone)."""
    project = write("project/site.yml", PLAYBOOK).parent
    inventory = write(
        "mixed.yml",
        "all:\n  hosts:\n"
        f"    local1: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}\n"
        "    gone: {ansible_host: 127.0.0.1, ansible_port: 1}\n",
    )
    return project, inventory


def test_a_run_from_python_gets_lines_and_one_outcome_without_click(mixed: tuple[Path, Path]) -> None:
    project, inventory = mixed
    code = (
        "import json, sys\nfrom pathlib import Path\nfrom provision import play, runner\nlines = []\n"
        f"request = runner.RunRequest(inventory=Path({str(inventory)!r}), project_dir=Path({str(project)!r}),"
        " tags=('fail',))\n"
        "outcome = play.run(request, progress=lines.append)\n"
        "print(json.dumps({'code': int(outcome.code), 'failed': outcome.failed, 'unreachable': outcome.unreachable,"
        " 'message': outcome.message, 'lines': [line.text for line in lines], 'click': 'click' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["click"] is False
    assert (got["code"], got["failed"], got["unreachable"]) == (ExitCode.FAILED, ["local1"], ["gone"])
    assert got["message"] == "failed on local1; unreachable: gone"
    assert "  changed      local1  Change something" in got["lines"]
    assert "  failed       local1  Fail: deliberately" in got["lines"]


def test_bad_requests_stop_before_anything_runs(mixed: tuple[Path, Path]) -> None:
    project, inventory = mixed
    with pytest.raises(UsageError, match="unknown tag 'bogus'"):
        play.run(RunRequest(inventory=inventory, project_dir=project, tags=("bogus",)))
    with pytest.raises(UsageError, match="--limit is empty"):
        play.run(RunRequest(inventory=inventory, project_dir=project, limit=" "))
    with pytest.raises(UsageError, match="'nothere' matches no host or group"):
        play.run(RunRequest(inventory=inventory, project_dir=project, limit="nothere"))


def test_with_verbosity_progress_gets_ansible_playbooks_own_output(mixed: tuple[Path, Path]) -> None:
    project, inventory = mixed
    lines: list[str] = []
    outcome = play.run(
        RunRequest(inventory=inventory, project_dir=project, limit="local1", verbosity=1),
        progress=lambda line: lines.append(f"{line.status}: {line.text}"),
    )
    assert outcome.code is ExitCode.OK and outcome.message == ""
    assert any(line.startswith("output: ") and "PLAY RECAP" in line for line in lines), lines


@pytest.mark.parametrize(
    ("result", "code", "message"),
    [
        (RunResult("successful", 0, {"h": HostStats(ok=1)}, None), ExitCode.OK, ""),
        (RunResult("failed", 2, {}, None), ExitCode.FAILED, "status failed (rc=2); rerun with -v to see why"),
        (RunResult("canceled", 254, {}, None, signal=15), ExitCode.TERMINATED, "stopped by SIGTERM;"),
    ],
)
def test_the_outcome_and_its_message_come_from_one_place(result: RunResult, code: ExitCode, message: str) -> None:
    decided = play.outcome(result)
    assert decided.code is code
    assert message in decided.message and bool(decided.message) == bool(message)


def test_the_weights_report_is_one_line_per_host_and_model() -> None:
    report = {
        "tiny": {"ok": ["a", "b"], "missing": [], "corrupt": []},
        "big": {"ok": [], "missing": ["c"], "corrupt": ["d"]},
    }
    assert verify.report_lines({"lab1": verify.states(report)}) == [
        "lab1  tiny: OK (2 files)",
        "lab1  big: missing c, corrupt d",
    ]
