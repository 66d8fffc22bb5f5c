"""provision render: the generated config files for one host, through provision.render."""

from pathlib import Path

import click

from provision import paths
from provision.cli.common import inventory_option, log
from provision.errors import ExitCode


@click.command()
@inventory_option
@click.option("--host", required=True, help="Inventory host to render for.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the files into this directory instead of printing them.",
)
def render(inventory_path: Path, host: str, out_dir: Path | None) -> ExitCode:
    """Render the generated config files (systemd units, ...) for one host, without connecting to it.

    Private keys are masked on screen; the files written with --out are exact.
    """
    from provision import inventory
    from provision import render as rendering

    loaded = inventory.load_inventory(inventory_path)
    files = rendering.render_host(loaded, host, out_dir)
    if not files:  # the roles whose plays skip the host (those that run on it had nothing to write there)
        runs = [
            f"{role} on {pattern!r}"
            for role, pattern in rendering.render_groups().items()
            if host not in loaded.select(pattern)
        ]
        groups = ", ".join(runs[:-1]) + f" and {runs[-1]}"
        log(f"nothing to render for {host}: {paths.SITE_PLAYBOOK.name} runs {groups}, and {host} is in none of them")
    for file in files:
        if out_dir is None:
            click.echo(f"# ==> {file.name} <==")
            click.echo(rendering.mask_secrets(file.text), nl=False)
        else:
            click.echo(f"wrote {paths.display(out_dir / file.name)}")
    return ExitCode.OK
