"""provision test: the packaged smoke suite (provision/smoke) against provisioned hosts."""

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from provision.cli.common import inventory_option
from provision.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from provision.inventory import Inventory


@click.command()
@inventory_option
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Also write a JUnit XML file.")
@click.option("-k", "keyword", help="Only checks matching this pytest -k expression.")
@click.option("--limit", help="Only these hosts or groups (comma-separated names, globs allowed).")
def test(inventory_path: Path, junit: Path | None, keyword: str | None, limit: str | None) -> ExitCode:
    """Check provisioned hosts with the packaged smoke suite (pytest-testinfra over SSH)."""
    from provision import inventory, smoke
    from provision.tools import ansible_env

    inv = inventory.load_inventory(inventory_path)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        str(Path(smoke.__file__).parent),
        "-p",
        "no:cacheprovider",
        f"--hosts={_testinfra_hosts(inv, limit)}",
        f"--ansible-inventory={inv.path.resolve()}",
        "-q",
    ]
    if keyword:
        argv += ["-k", keyword]
    if junit is not None:
        argv.append(f"--junitxml={junit}")
    returncode = _run_pytest(argv, env={**os.environ, **ansible_env()})
    if returncode == 5:  # pytest: no tests collected
        raise UsageError(f"no smoke checks selected; check --limit {limit!r} and -k {keyword!r}")
    return ExitCode.OK if returncode == 0 else ExitCode.FAILED


def _run_pytest(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, env=env, check=False).returncode


def _testinfra_hosts(inv: "Inventory", limit: str | None) -> str:
    """testinfra's --hosts for a --limit: names and globs of hosts or groups, comma-separated."""
    from provision import inventory

    if limit is None:
        return "ansible://all"
    names = [name.strip() for name in limit.split(",") if name.strip()]
    if not names or any(ch in limit for ch in ":!&"):
        raise UsageError(
            f"--limit {limit!r}: provision test takes host or group names (globs allowed), comma-separated"
        )
    inventory.check_limit(inv, limit)
    return ",".join(f"ansible://{name}" for name in names)
