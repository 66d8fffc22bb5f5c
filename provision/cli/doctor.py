"""provision doctor: whether each host can serve, through provision.doctor."""

from pathlib import Path

import click

from provision.cli.common import extra_vars_option, inventory_option, log, parse_extra_vars, strategy_option
from provision.errors import ExitCode


@click.command()
@inventory_option
@click.option("--limit", help="Only these hosts or groups (Ansible pattern).")
@click.option("--json", "as_json", is_flag=True, help="Print every reading and verdict as JSON instead of the table.")
@extra_vars_option
@strategy_option
def doctor(
    inventory_path: Path, limit: str | None, as_json: bool, extra_vars: tuple[str, ...], strategy: str
) -> ExitCode:
    """Say, changing nothing, whether each host can serve (GPUs, driver, CUDA, runtime, disks), and if not why."""
    import json

    from provision import doctor as checkup

    found = checkup.examine(inventory_path, limit, parse_extra_vars(extra_vars), strategy, note=log)
    if as_json:
        click.echo(json.dumps([report.as_json() for report in found.reports], indent=2, sort_keys=True))
    else:
        for line in checkup.table(found.reports):
            click.echo(line)
    for report in found.reports:
        for reason in report.verdict.blocks:
            log(f"provision: {report.host}: cannot serve: {reason}")
        if report.problem:
            log(f"provision: {report.host}: {report.problem}")
    return found.code
