"""What one call of the CLI entry point returned, for the unit tests' run_cli fixture.

Its own module, not conftest.py: `from conftest import ...` resolves to whichever conftest pytest imported first,
which in a full run (unit and integration together) is tests/integration/conftest.py.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str
