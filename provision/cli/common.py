"""What the command modules share: the options several commands take, and how a run is shown."""

import contextlib
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provision.errors import UsageError
from provision.events import OUTPUTS, TASK_OUTPUT_HOSTS

if TYPE_CHECKING:
    from provision.events import Line
    from provision.play import PlayOutcome

STATUS_COLORS = {
    "ok": "green",
    "changed": "yellow",
    "failed": "red",
    "unreachable": "red",
    "ignored": "cyan",
    "skipped": "cyan",
    "polling": "blue",
    "waiting": "blue",
    "play": "bright_white",
}

output_option = click.option(
    "--output",
    type=click.Choice(OUTPUTS),
    default="auto",
    show_default=True,
    envvar="PROVISION_OUTPUT",
    help="host: a line per task and host. task: a line per task, with how many hosts were ok, changed, failed, "
    "skipped and unreachable, the changed and failed hosts named and each failure in full; the recap counts "
    f"hosts and names the failed ones. auto: task above {TASK_OUTPUT_HOSTS} hosts, host up to that. Also "
    "PROVISION_OUTPUT.",
)

strategy_option = click.option(
    "--strategy",
    type=click.Choice(["mitogen", "linear"]),
    default="mitogen",
    show_default=True,
    envvar="PROVISION_STRATEGY",
    help="How Ansible runs tasks: Mitogen (one Python per host for the whole run) or Ansible's own linear "
    "strategy (a new interpreter per task; slower). Also PROVISION_STRATEGY.",
)

inventory_option = click.option(
    "-i",
    "--inventory",
    "inventory_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Inventory file or directory.",
)


extra_vars_option = click.option(
    "-e",
    "--extra-vars",
    "extra_vars",
    multiple=True,
    metavar="KEY=VALUE|@FILE",
    help="Set a variable, or load a YAML file of them (repeatable). Never a secret.",
)


def log(message: str) -> None:
    click.echo(message, err=True)


def note(message: str) -> None:
    """A line about the run itself (a wait for a host lock, the strategy), from the library."""
    log(f"provision: {message}")


def show(line: "Line") -> None:
    """A progress line of a run, coloured by its status (ansible-playbook's own output with -v as it is)."""
    color = STATUS_COLORS.get(line.status)
    click.echo(click.style(line.text, fg=color) if color else line.text)


def finish(outcome: "PlayOutcome") -> None:
    """After a run: the recap (a line per host; per task output: hosts counted, the failed named), where the
    artifacts were kept, and the verdict when it did not pass."""
    import signal

    from provision import events

    if outcome.signal == signal.SIGHUP:
        _drop_output_to_a_hung_up_terminal()
    if outcome.stats:
        click.echo()
        recap = events.fleet_recap if outcome.output == "task" else events.recap
        for text in recap(outcome.stats):
            click.echo(text)
    if outcome.artifacts_dir is not None:
        click.echo(f"artifacts kept in {outcome.artifacts_dir}")
    if outcome.message:
        click.echo(f"provision: {outcome.message}", err=True)


def _drop_output_to_a_hung_up_terminal() -> None:
    """After SIGHUP the terminal may be gone, and a write to it fails (EIO): send what is left to /dev/null.

    Output to a file or pipe is kept. Without this, the recap's first line would end the exit code 129 in a
    traceback (exit 1), and Python's last flush at exit would turn any code into 120.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # not a file descriptor (captured output)
            continue
        # A character device: the terminal (isatty() is false once it has hung up), or /dev/null already.
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            with contextlib.suppress(OSError):
                stream.flush()
            os.dup2(devnull, fd)
    os.close(devnull)


def parse_extra_vars(values: Sequence[str]) -> dict[str, Any]:
    """-e KEY=VALUE (a string) and -e @FILE (a YAML mapping), later ones winning."""
    import yaml

    merged: dict[str, Any] = {}
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"-e {value}: cannot read {path} ({exc.strerror})") from exc
            except yaml.YAMLError as exc:
                raise UsageError(f"-e {value}: {path} is not valid YAML ({exc})".splitlines()[0]) from exc
            if not isinstance(loaded, dict):
                raise UsageError(f"-e {value}: {path} must hold a mapping of variable names to values")
            merged.update(loaded)
            continue
        key, sep, val = value.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"-e {value!r}: expected KEY=VALUE or @FILE.yml")
        merged[key.strip()] = val
    return merged
