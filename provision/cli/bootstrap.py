"""provision bootstrap: first contact with a host, through provision.bootstrap."""

import sys
from pathlib import Path

import click

from provision import paths
from provision.cli.common import log
from provision.errors import ExitCode, UsageError


@click.command()
@click.argument("target", metavar="USER@HOST")
@click.option("--port", "-p", default=22, show_default=True, type=click.IntRange(1, 65535), help="SSH port.")
@click.option("--password-stdin", is_flag=True, help="Read USER's password from stdin (never from an argument).")
@click.option("--identity", type=click.Path(dir_okay=False, path_type=Path), help="Log in with this private key.")
@click.option("--admin", default="provision", show_default=True, help="The admin user to create (key + sudo).")
@click.option(
    "--key",
    "public_key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Public key to install for the admin.  [default: ~/.config/provision/id_ed25519.pub, made if missing]",
)
@click.option(
    "--host-key-policy",
    type=click.Choice(["accept-new", "yes", "no"]),
    default="accept-new",
    show_default=True,
    help="accept-new records an unknown host key; yes requires a known one; no checks nothing.",
)
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("~/.config/provision/known_hosts"),
    show_default=True,
    help="Where host keys are checked and recorded.",
)
@click.option("--name", help="Inventory name of the host.  [default: HOST]")
@click.option(
    "--inventory-append",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also add the host to this YAML inventory (under all.hosts).",
)
def bootstrap(
    target: str,
    port: int,
    password_stdin: bool,
    identity: Path | None,
    admin: str,
    public_key: Path | None,
    host_key_policy: str,
    known_hosts: Path,
    name: str | None,
    inventory_append: Path | None,
) -> ExitCode:
    """First contact: create an admin user with our key and sudo on a host Ansible cannot manage yet."""
    import yaml

    from provision import bootstrap as first_contact

    user, host = first_contact.parse_target(target)
    if password_stdin and identity is not None:
        raise UsageError("--password-stdin and --identity exclude each other")
    password = None
    if password_stdin:
        password = _read_password(f"{user}@{host}'s password: ")
        if not password:
            raise UsageError("--password-stdin: stdin held no password")
    request = first_contact.BootstrapRequest(
        user=user,
        host=host,
        port=port,
        password=password,
        identity=identity,
        admin=admin,
        known_hosts=known_hosts,
        host_key_policy=host_key_policy,
        name=name,
    )
    request = first_contact.with_keys(request, public_key)
    result = first_contact.bootstrap(request, log=log)
    for change in result.changes:
        click.echo(click.style(f"changed: {change}", fg="yellow"))
    if not result.changed:
        click.echo(click.style(f"{request.inventory_name}: unchanged", fg="green"))
    click.echo("inventory entry:")
    click.echo(yaml.safe_dump({request.inventory_name: result.entry}, sort_keys=False), nl=False)
    if inventory_append is not None:
        added = first_contact.append_to_inventory(inventory_append, request.inventory_name, result.entry)
        verb = "added to" if added else "already in"
        click.echo(f"{request.inventory_name} {verb} {paths.display(inventory_append)}")
    return ExitCode.OK


def _read_password(prompt: str) -> str:
    """One line from stdin; typed at a terminal, with a prompt and without echo."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")
