"""The command line: Click commands that translate flags into library calls.

This is the one place errors become exit codes (see provision.errors.ExitCode). Heavy modules
(ansible_runner, jinja2, paramiko) are imported inside the commands that need them.
"""

import contextlib
import os
import signal
import stat
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provision import __version__, paths
from provision.errors import EnvironmentProblem, ExitCode, ProvisionError, UsageError

if TYPE_CHECKING:
    from provision.inventory import Inventory
    from provision.runner import TaskEvent

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provision")
@click.option("--debug", is_flag=True, help="Show the traceback behind an error.")
def cli(debug: bool) -> None:
    """Turn cloud VMs into LLM-inference hosts."""


# ---- up ---------------------------------------------------------------------------------------------


@cli.command()
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
    from provision import inventory

    wanted, skipped = inventory.split_tags(tags), inventory.split_tags(skip_tags)
    inventory.check_tags(wanted, skipped, inventory.known_tags(paths.SITE_PLAYBOOK))
    return _play(
        "site.yml",
        inventory_path,
        limit,
        tags=wanted,
        skip_tags=skipped,
        check=check,
        diff=diff,
        extravars=parse_extra_vars(extra_vars),
        keep_artifacts=keep_artifacts,
        verbosity=verbose,
        strategy=strategy,
        lock_hosts=not check,
    )


def _play(
    playbook: str,
    inventory_path: Path,
    limit: str | None,
    on_result: Any = None,
    lock_hosts: bool = False,
    **options: Any,
) -> ExitCode:
    """Run one of our playbooks as `provision up` does: a line per task and host, a recap, an exit code.

    With `lock_hosts` (a run that may change hosts), no other such run from this controller may be running on
    any of its hosts (provision.hostlock).
    """
    from provision import argcheck, events, hostlock, inventory, runner

    if limit is not None and not limit.strip():
        raise UsageError("--limit is empty; name hosts or groups, e.g. --limit lab1,lab2")
    inv = inventory.load_inventory(inventory_path)  # the slow check (it runs ansible-inventory) goes last
    if limit is not None:
        inventory.check_limit(inv, limit)
    argcheck.preflight(
        inv,
        paths.PLAYBOOKS / playbook,
        limit=limit,
        skip_tags=options.get("skip_tags", ()),
        extravars=options.get("extravars"),
    )
    names = inventory.controller_env_names(inv, options.get("extravars") or {})
    request = runner.RunRequest(inventory=inv.path, playbook=playbook, limit=limit, controller_env=names, **options)
    host_width = max(len(h) for h in inv.hosts)
    verbose = options.get("verbosity", 0)

    def show(event: "TaskEvent") -> None:
        if on_result is not None:
            on_result(event)
        if verbose and event.stdout:
            click.echo(event.stdout)
            return
        line = events.event_line(event, host_width)
        if line is not None:
            click.echo(click.style(line.text, fg=STATUS_COLORS.get(line.status)))

    locks = {}
    if lock_hosts:
        for host in inv.select(limit) if limit else inv.hosts:
            locks[host] = hostlock.address(host, inv.hostvars.get(host, {}))
    with hostlock.hold(locks, note=lambda text: _log(f"provision: {text}")):
        result = runner.run(request, on_event=show, note=lambda text: _log(f"provision: {text}"))
    if result.signal == signal.SIGHUP:
        _drop_output_to_a_hung_up_terminal()
    if result.stats:
        click.echo()
        for text in events.recap(result.stats):
            click.echo(text)
    if result.artifacts_dir is not None:
        click.echo(f"artifacts kept in {result.artifacts_dir}")
    code = runner.outcome(result)
    if code is not ExitCode.OK:
        click.echo(f"provision: {_verdict(code, result)}", err=True)
    return code


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


def _verdict(code: ExitCode, result: Any) -> str:
    failed = sorted(h for h, s in result.stats.items() if s.failed)
    unreachable = sorted(h for h, s in result.stats.items() if s.unreachable)
    if result.signal is not None and code is not ExitCode.INTERRUPTED:
        return (
            f"stopped by {signal.Signals(result.signal).name}; hosts may be half-provisioned, run `provision up` again"
        )
    if code is ExitCode.INTERRUPTED:
        return "interrupted; hosts may be half-provisioned, run `provision up` again"
    if code is ExitCode.UNREACHABLE:
        return f"unreachable: {', '.join(unreachable)}; check ansible_host, ansible_port and ssh access"
    if failed:
        also = f"; unreachable: {', '.join(unreachable)}" if unreachable else ""
        return f"failed on {', '.join(failed)}{also}"
    return f"ansible-playbook ended with status {result.status} (rc={result.rc}); rerun with -v to see why"


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


# ---- render -----------------------------------------------------------------------------------------


@cli.command()
@inventory_option
@click.option("--host", required=True, help="Inventory host to render for.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the files into this directory instead of printing them.",
)
def render(inventory_path: Path, host: str, out_dir: Path | None) -> ExitCode:
    """Render the generated config files (systemd units, ...) for one host, without connecting to it."""
    from provision import inventory
    from provision import render as rendering

    files = rendering.render_host(inventory.load_inventory(inventory_path), host, out_dir)
    if not files:
        groups = " and ".join(f"{role} on {pattern!r}" for role, pattern in rendering.render_groups().items())
        _log(f"nothing to render for {host}: {rendering.SERVING_PLAYBOOK} runs {groups}, and {host} is in neither")
    for file in files:
        if out_dir is None:
            click.echo(f"# ==> {file.name} <==")
            click.echo(file.text, nl=False)
        else:
            click.echo(f"wrote {paths.display(out_dir / file.name)}")
    return ExitCode.OK


# ---- test -------------------------------------------------------------------------------------------


@cli.command()
@inventory_option
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Also write a JUnit XML file.")
@click.option("-k", "keyword", help="Only checks matching this pytest -k expression.")
@click.option("--limit", help="Only these hosts or groups (comma-separated names, globs allowed).")
def test(inventory_path: Path, junit: Path | None, keyword: str | None, limit: str | None) -> ExitCode:
    """Check provisioned hosts with the packaged smoke suite (pytest-testinfra over SSH)."""
    from provision import inventory, smoke
    from provision.tools import ansible_env

    inv = inventory.load_inventory(inventory_path)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        str(Path(smoke.__file__).parent),
        "-p",
        "no:cacheprovider",
        f"--hosts={_testinfra_hosts(inv, limit)}",
        f"--ansible-inventory={inv.path.resolve()}",
        "-q",
    ]
    if keyword:
        argv += ["-k", keyword]
    if junit is not None:
        argv.append(f"--junitxml={junit}")
    returncode = _run_pytest(argv, env={**os.environ, **ansible_env()})
    if returncode == 5:  # pytest: no tests collected
        raise UsageError(f"no smoke checks selected; check --limit {limit!r} and -k {keyword!r}")
    return ExitCode.OK if returncode == 0 else ExitCode.FAILED


def _run_pytest(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, env=env, check=False).returncode


def _testinfra_hosts(inv: "Inventory", limit: str | None) -> str:
    """testinfra's --hosts for a --limit: names and globs of hosts or groups, comma-separated."""
    from provision import inventory

    if limit is None:
        return "ansible://all"
    names = [name.strip() for name in limit.split(",") if name.strip()]
    if not names or any(ch in limit for ch in ":!&"):
        raise UsageError(
            f"--limit {limit!r}: provision test takes host or group names (globs allowed), comma-separated"
        )
    inventory.check_limit(inv, limit)
    return ",".join(f"ansible://{name}" for name in names)


# ---- weights ----------------------------------------------------------------------------------------


@cli.group()
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
        lock = lockfile.from_endpoint(endpoint, model, revision, token, note=lambda text: _log(f"note: {text}"))
    text = lockfile.dump(lock)
    if output is None:
        click.echo(text, nl=False)
    else:
        paths.write_text(output, text, "-o")
        _log(f"wrote {paths.display(output)}: {len(lock.files)} files, {lock.size} bytes, revision {lock.revision}")
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
@strategy_option
def weights_verify(inventory_path: Path, limit: str | None, deep: bool, strategy: str) -> ExitCode:
    """Report per host whether each model's files are OK, missing or corrupt (changes nothing)."""
    reports: dict[str, dict[str, Any]] = {}

    def collect(event: "TaskEvent") -> None:
        if event.kind in ("runner_on_ok", "runner_on_failed") and event.result.report is not None:
            reports[event.host] = dict(event.result.report)

    code = _play(
        "weights_verify.yml",
        inventory_path,
        limit,
        on_result=collect,
        extravars={"weights_reverify": deep},
        strategy=strategy,
    )
    if reports:
        click.echo()
    for host, report in sorted(reports.items()):
        for name, state in report.items():
            if state["missing"] or state["corrupt"]:
                bad = [f"missing {p}" for p in state["missing"]] + [f"corrupt {p}" for p in state["corrupt"]]
                click.echo(f"{host}  {name}: " + ", ".join(bad))
            else:
                click.echo(f"{host}  {name}: OK ({len(state['ok'])} files)")
    return code


# ---- doctor -----------------------------------------------------------------------------------------


@cli.command()
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

    found = checkup.examine(inventory_path, limit, parse_extra_vars(extra_vars), strategy, note=_log)
    if as_json:
        click.echo(json.dumps([report.as_json() for report in found.reports], indent=2, sort_keys=True))
    else:
        for line in checkup.table(found.reports):
            click.echo(line)
    for report in found.reports:
        for reason in report.verdict.blocks:
            _log(f"provision: {report.host}: cannot serve: {reason}")
        if report.problem:
            _log(f"provision: {report.host}: {report.problem}")
    return found.code


# ---- bootstrap --------------------------------------------------------------------------------------


@cli.command()
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
    private_key = None
    if public_key is None:
        private_key = first_contact.ensure_project_key(paths.PROJECT_KEY.expanduser())
        public_key = private_key.with_name(private_key.name + ".pub")
    elif public_key.suffix == ".pub" and public_key.with_suffix("").exists():
        private_key = public_key.with_suffix("")
    request = first_contact.BootstrapRequest(
        user=user,
        host=host,
        port=port,
        password=password,
        identity=identity,
        admin=admin,
        public_key=first_contact.read_public_key(public_key),
        private_key=private_key.resolve() if private_key else None,
        known_hosts=known_hosts.expanduser().resolve(),
        host_key_policy=host_key_policy,
        name=name,
    )
    result = first_contact.bootstrap(request, log=_log)
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


# ---- lab --------------------------------------------------------------------------------------------


@cli.group()
def lab() -> None:
    """Local throwaway VMs (qemu) for trying and testing provision."""


@lab.command("up")
@click.option("--hosts", default=2, show_default=True, type=click.IntRange(min=1), help="Number of VMs.")
@click.option(
    "--inventory-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the lab inventory.  [default: inventories/lab/hosts.yml]",
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
def lab_up(hosts: int, inventory_out: Path | None, mirror: bool, base_port: int | None, flavor: str) -> ExitCode:
    """Start lab VMs lab1..labN and write their inventory."""
    from provision import lab as lab_vms

    out = inventory_out or paths.INVENTORIES / "lab" / "hosts.yml"
    kwargs = {} if base_port is None else {"base_port": base_port}
    started = lab_vms.up(hosts=hosts, inventory_out=out, mirror=mirror, log=_log, flavor=flavor, **kwargs)
    for host in started:
        click.echo(f"{host.name}  127.0.0.1:{host.ssh_port}  pid {host.pid}")
    click.echo(f"inventory: {paths.display(out)}")
    return ExitCode.OK


@lab.command("down")
def lab_down() -> ExitCode:
    """Stop the lab VMs and remove their state."""
    from provision import lab as lab_vms

    stopped = lab_vms.down(log=_log)
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

    lab_vms.restart(name, log=_log, data_disk=not no_data_disk)
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

    image = ensure_demo_image(dirs().cache, log=_log)
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


def _log(message: str) -> None:
    click.echo(message, err=True)


# ---- entry point ------------------------------------------------------------------------------------


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
