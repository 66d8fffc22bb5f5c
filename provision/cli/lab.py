"""provision lab: local throwaway VMs, through provision.lab."""

import os
import re
from pathlib import Path

import click

from provision import paths
from provision.cli.common import log
from provision.errors import EnvironmentProblem, ExitCode, UsageError


@click.group()
def lab() -> None:
    """Local throwaway VMs (qemu) for trying and testing provision.

    \b
    Flavors (--flavor of up and prepare):
      plain    Debian 12 as a cloud image has it
      oci      OCI Ubuntu's host iptables rules
      selinux  SELinux with Debian's reference policy
      docker   Docker, nginx and the monitoring packages installed, disabled
      nvidia   Debian's NVIDIA driver, installed by the nvidia role
    """


@lab.command("up")
@click.option("--hosts", default=2, show_default=True, type=click.IntRange(min=1), help="Number of VMs.")
@click.option(
    "--inventory-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the lab inventory.  [default: inventories/lab/hosts.yml; for an installed provision, "
    "under the working directory]",
)
@click.option(
    "--mirror/--no-mirror",
    default=True,
    show_default=True,
    help="Point the VMs' apt at a package cache (apt-cacher-ng) on this machine.",
)
@click.option("--base-port", type=click.IntRange(1024, 65535), help="First SSH port on 127.0.0.1.")
@click.option(
    "--flavor",
    default="plain",
    show_default=True,
    help="Image variant for the VMs started now (hosts already running keep theirs); see `provision lab --help`.",
)
@click.option(
    "--name",
    "only",
    metavar="labK",
    help="Start this VM alone (of --flavor), not lab1..labK-1 that are not running; --hosts is then ignored.",
)
def lab_up(
    hosts: int, inventory_out: Path | None, mirror: bool, base_port: int | None, flavor: str, only: str | None
) -> ExitCode:
    """Start lab VMs lab1..labN and write their inventory."""
    from provision import lab as lab_vms

    index = None
    if only is not None:
        match = re.fullmatch(r"lab([1-9][0-9]?)", only)
        if not match:
            raise UsageError(f"--name: {only!r} is not a lab VM's name (lab1 .. lab99)")
        index = int(match.group(1))
    out = inventory_out or _default_inventory()
    kwargs = {} if base_port is None else {"base_port": base_port}
    started = lab_vms.up(
        hosts=index or hosts, inventory_out=out, mirror=mirror, log=log, flavor=flavor, only=index, **kwargs
    )
    for host in started:
        click.echo(f"{host.name}  127.0.0.1:{host.ssh_port}  pid {host.pid}")
    click.echo(f"inventory: {paths.display(out)}")
    return ExitCode.OK


@lab.command("prepare")
@click.option(
    "--flavor",
    "flavors",
    multiple=True,
    default=("plain",),
    show_default=True,
    help="Image variant to prepare (repeatable); see `provision lab --help`.",
)
def lab_prepare(flavors: tuple[str, ...]) -> ExitCode:
    """Build (once) the images and saved VMs that `lab up` starts VMs from, so later starts take seconds."""
    from provision import lab as lab_vms

    for flavor in flavors:
        _, template = lab_vms.prepare(log, flavor)
        click.echo(f"{flavor}: ready ({paths.display(template)})")
    return ExitCode.OK


def _default_inventory() -> Path:
    """inventories/lab/hosts.yml of the checkout; for an installed wheel, of the working directory, next to a copy
    of the lab's group_vars (files already there are kept), so `provision up -i inventories/lab` works as in a
    checkout and nothing is written into site-packages."""
    bundled = paths.INVENTORIES / "lab"
    if not paths.INSTALLED:
        return bundled / "hosts.yml"
    here = Path("inventories/lab")
    for source in sorted(bundled.rglob("*")):
        target = here / source.relative_to(bundled)
        if source.is_file() and not target.exists():
            paths.write_text(target, source.read_text(encoding="utf-8"), "--inventory-out", parents=True)
    return here / "hosts.yml"


@lab.command("down")
def lab_down() -> ExitCode:
    """Stop the lab VMs and remove their state."""
    from provision import lab as lab_vms

    stopped = lab_vms.down(log=log)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "no lab VMs were running")
    return ExitCode.OK


@lab.command("status")
def lab_status() -> ExitCode:
    """List the lab VMs."""
    from provision import lab as lab_vms

    hosts = lab_vms.status()
    if not hosts:
        click.echo("no lab VMs (start some with: provision lab up)")
    for host in hosts:
        state = "running" if host.running else "stopped"
        pid = f"  pid {host.pid}" if host.pid else ""
        click.echo(f"{host.name}  127.0.0.1:{host.ssh_port}  {state}{pid}")
    return ExitCode.OK


@lab.command("restart")
@click.argument("name")
@click.option("--no-data-disk", is_flag=True, help="Boot without the data disk, as if it were detached.")
def lab_restart(name: str, no_data_disk: bool) -> ExitCode:
    """Power-cycle a lab VM and boot it cold (its disks keep their contents)."""
    from provision import lab as lab_vms

    lab_vms.restart(name, log=log, data_disk=not no_data_disk)
    return ExitCode.OK


@lab.command("demo-image")
@click.option(
    "--vars-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the inventory variables that deploy it (e.g. group_vars/inference.yml).",
)
def lab_demo_image(vars_out: Path | None) -> ExitCode:
    """Build (once) the demo OpenAI-compatible server's image, a rootfs tar for docker import."""
    import yaml

    from provision.lab import dirs
    from provision.lab.demo_image import ensure_demo_image

    image = ensure_demo_image(dirs().cache, log=log)
    if vars_out is not None:
        vars_out.parent.mkdir(parents=True, exist_ok=True)
        header = "# Written by `provision lab demo-image`: the lab's demo server as the inference image.\n"
        vars_out.write_text("---\n" + header + yaml.safe_dump(image.inventory_vars(), sort_keys=False))
    click.echo(f"{image.name}  {image.archive}")
    return ExitCode.OK


@lab.command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def lab_ssh(name: str, command: tuple[str, ...]) -> None:
    """Open a shell on a lab VM, or run COMMAND there."""
    from provision import lab as lab_vms

    argv = lab_vms.ssh_argv(name, command)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot run {argv[0]}: {exc.strerror}; install the OpenSSH client") from exc
