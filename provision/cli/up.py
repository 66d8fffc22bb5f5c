"""provision up: run playbooks/site.yml through provision.play."""

from pathlib import Path

import click

from provision.cli.common import (
    extra_vars_option,
    finish,
    inventory_option,
    output_option,
    parse_extra_vars,
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
@click.option(
    "-v", "--verbose", count=True, help="Show ansible-playbook's own output (-vv, -vvv: more), whatever --output says."
)
@output_option
@strategy_option
@click.option(
    "--batch",
    "batch_sizes",
    multiple=True,
    metavar="N|N%",
    help="Roll out in batches: the whole run on N hosts (or N% of the selected ones, at least 1) at a time, each "
    "drained from the gateways first and rejoined after its health gate (repeatable: 1, then 25%, ...; the last "
    "size repeats, as Ansible's serial). Also provision_batches in the inventory (group_vars/all).",
)
@click.option(
    "--max-fail-percentage",
    type=click.IntRange(0, 100),
    metavar="N",
    help="With batches: a batch fails, and stops the run, when its failed hosts are MORE than N% of it (Ansible's "
    "rule: exactly N% passes). Default 0: any failure stops. Also provision_max_fail_percentage in the inventory.",
)
@click.option(
    "--drain-timeout",
    type=click.IntRange(0),
    metavar="SECONDS",
    default=60,
    show_default=True,
    help="With batches: seconds the streams in flight to a drained host get before its replicas restart.",
)
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
    output: str,
    strategy: str,
    batch_sizes: tuple[str, ...],
    max_fail_percentage: int | None,
    drain_timeout: int,
) -> ExitCode:
    """Provision the hosts in an inventory (runs playbooks/site.yml)."""
    from provision import batches, inventory, play, runner
    from provision.cli.statusline import StatusLine

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
    checked = play.check(request)
    rolling = batches.settings(*checked, batch_sizes, max_fail_percentage, drain_timeout)
    with StatusLine() as shown:
        if rolling is None:
            outcome = play.run(
                request, progress=shown.show, note=shown.note, status=shown.status, lock_hosts=True, output=output,
                checked=checked[0],
            )  # fmt: skip
        else:
            outcome = batches.run(
                request, rolling, checked, progress=shown.show, note=shown.note, output=output, status=shown.status
            )
    finish(outcome)
    return outcome.code
