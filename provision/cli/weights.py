"""provision weights: lockfiles (provision.weights.lockfile) and checking hosts against them
(provision.weights.verify)."""

import os
from pathlib import Path

import click

from provision import paths
from provision.cli.common import finish, inventory_option, log, output_option, strategy_option
from provision.errors import ExitCode, UsageError


@click.group()
def weights() -> None:
    """Model weights: lockfiles, and checking the files on hosts against them."""


@weights.command("lock")
@click.argument("source", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", required=True, help="The model's name as mirrors know it, e.g. Qwen/Qwen2.5-0.5B-Instruct.")
@click.option("--revision", default="main", show_default=True, help="Revision to pin (a branch, tag or commit).")
@click.option("--endpoint", help="Lock from this Hugging Face-compatible endpoint instead of a local SOURCE directory.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding a token for the endpoint (default: $HF_TOKEN if set).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not to stdout.")
def weights_lock(
    source: Path | None,
    model: str,
    revision: str,
    endpoint: str | None,
    token_file: Path | None,
    output: Path | None,
) -> ExitCode:
    """Make a weights lockfile from a local model directory SOURCE or from an --endpoint."""
    from provision.weights import lockfile

    if (source is None) == (endpoint is None):
        raise UsageError("give either a local model directory or --endpoint URL, not both")
    if source is not None:
        lock = lockfile.from_directory(source, model, revision)
    else:
        assert endpoint is not None
        token = _read_token(token_file) if token_file else os.environ.get("HF_TOKEN") or None
        lock = lockfile.from_endpoint(endpoint, model, revision, token, note=lambda text: log(f"note: {text}"))
    text = lockfile.dump(lock)
    if output is None:
        click.echo(text, nl=False)
    else:
        paths.write_text(output, text, "-o")
        log(f"wrote {paths.display(output)}: {len(lock.files)} files, {lock.size} bytes, revision {lock.revision}")
    return ExitCode.OK


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"--token-file {path}: {exc.strerror}") from None


@weights.command("verify")
@inventory_option
@click.option("--limit", help="Only these hosts or groups (Ansible pattern).")
@click.option("--deep", is_flag=True, help="Re-hash every file instead of trusting its verification record.")
@output_option
@strategy_option
def weights_verify(inventory_path: Path, limit: str | None, deep: bool, output: str, strategy: str) -> ExitCode:
    """Report per host whether each model's files are OK, missing or corrupt (changes nothing)."""
    from provision.cli.statusline import StatusLine
    from provision.weights import verify

    with StatusLine() as shown:
        found = verify.verify(
            inventory_path, limit, deep, strategy, progress=shown.show, note=shown.note, status=shown.status,
            output=output,
        )  # fmt: skip
    finish(found.outcome)
    if found.reports:
        click.echo()
    for line in verify.report_lines(found.reports):
        click.echo(line)
    return found.outcome.code
