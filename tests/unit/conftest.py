"""Fixtures for the unit tests: run the real CLI entry point and capture what it prints."""

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_result import CliResult

from provision import cli


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Call provision.cli.main() (the real entry point, with its error mapping) and capture its output."""

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            cli.main(list(args))
        captured = capsys.readouterr()
        return CliResult(int(exit_info.value.code or 0), captured.out, captured.err)

    return invoke


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """write("dir/file.yml", text) creates the file under tmp_path and returns its path."""

    def write_file(relative: str, text: str) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write_file


@pytest.fixture
def local_inventory(write: Callable[[str, str], Path]) -> Path:
    """An inventory with one host that Ansible reaches without SSH (connection: local)."""
    return write(
        "inventory/hosts.yml",
        "all:\n  hosts:\n    local1:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n",
    )


@pytest.fixture(autouse=True)
def own_host_locks(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's `provision up` takes its host locks apart from the user's and other test runs'."""
    monkeypatch.setenv("PROVISION_LOCK_DIR", str(tmp_path_factory.mktemp("locks")))
