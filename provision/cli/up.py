"""provision up: run playbooks/site.yml through provision.play."""

from pathlib import Path

import click

from provision.cli.common import (
    extra_vars_option,
    finish,
    inventory_option,
    note,
    parse_extra_vars,
    show,
    strategy_option,
)
from provision.errors import ExitCode


@click.command()
@inventory_option
@click.option("--limit", help="Only these hosts or groups (Ansible pattern).")
@click.option("--tags", "-t", multiple=True, help="Only tasks with these tags (repeatable, comma-separated).")
@click.option("--skip-tags", multiple=True, help="Skip tasks with these tags (repeatable, comma-separated).")
@click.option("--check", is_flag=True, help="Dry run: report what would change.")
@click.option("--diff", is_flag=True, help="Show the changes made to files.")
@extra_vars_option
@click.option("--keep-artifacts", is_flag=True, help="Keep ansible-runner's private data dir; print its path.")
@click.option("-v", "--verbose", count=True, help="Show ansible-playbook's own output (-vv, -vvv: more).")
@strategy_option
def up(
    inventory_path: Path,
    limit: str | None,
    tags: tuple[str, ...],
    skip_tags: tuple[str, ...],
    check: bool,
    diff: bool,
    extra_vars: tuple[str, ...],
    keep_artifacts: bool,
    verbose: int,
    strategy: str,
) -> ExitCode:
    """Provision the hosts in an inventory (runs playbooks/site.yml)."""
    from provision import inventory, play, runner

    request = runner.RunRequest(
        inventory=inventory_path,
        playbook="site.yml",
        limit=limit,
        tags=inventory.split_tags(tags),
        skip_tags=inventory.split_tags(skip_tags),
        check=check,
        diff=diff,
        extravars=parse_extra_vars(extra_vars),
        keep_artifacts=keep_artifacts,
        verbosity=verbose,
        strategy=strategy,
    )
    outcome = play.run(request, progress=show, note=note, lock_hosts=True)
    finish(outcome)
    return outcome.code
