"""The command line: Click commands that translate flags into library calls, one module per command or group.

This is the one place errors become exit codes (see provision.errors.ExitCode). Heavy modules
(ansible_runner, jinja2, paramiko) are imported inside the commands that need them; everything a command does
is callable from Python without Click (provision.play for a run).
"""

import sys
import traceback
from collections.abc import Sequence

import click

from provision import __version__
from provision.cli import bootstrap, doctor, lab, render, smoke, up, weights
from provision.errors import ExitCode, ProvisionError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provision")
@click.option("--debug", is_flag=True, help="Show the traceback behind an error.")
def cli(debug: bool) -> None:
    """Turn cloud VMs into LLM-inference hosts."""


for command in (
    up.up,
    render.render,
    smoke.test,
    weights.weights,
    doctor.doctor,
    bootstrap.bootstrap,
    lab.lab,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI and exit with its ExitCode; expected errors print one line, --debug adds the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = False
    try:
        with cli.make_context("provision", args) as ctx:
            debug = bool(ctx.params.get("debug"))
            code = cli.invoke(ctx)
    except click.exceptions.Exit as exc:  # --help, --version
        code = exc.exit_code
    except click.ClickException as exc:  # Click's own usage errors (unknown option, missing argument)
        exc.show()
        code = ExitCode.USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        if debug:
            traceback.print_exc()
        click.echo("provision: interrupted", err=True)
        code = ExitCode.INTERRUPTED
    except ProvisionError as exc:
        if debug:
            traceback.print_exc()
        for line in str(exc).splitlines() or [""]:  # one line per problem
            click.echo(f"provision: error: {line}", err=True)
        code = exc.exit_code
    sys.exit(int(code or 0))
