"""First contact with a host Ansible cannot manage yet: make an admin user with our key and sudo.

The only module that imports paramiko.  The password (from stdin, never argv) lives in memory only: it is
never printed, logged, put in an exception or sent anywhere but to the host's SSH server and, when the login
user needs one for sudo, to sudo's stdin over the encrypted channel.
"""

from __future__ import annotations

import logging
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import EnvironmentProblem, HostsUnreachable, ProvisionError, UsageError

if TYPE_CHECKING:
    import paramiko

HOST_KEY_POLICIES = ("accept-new", "yes", "no")
CONNECT_TIMEOUT = 15.0
CONNECT_ATTEMPTS = 3
COMMAND_TIMEOUT = 600.0
ADMIN_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
HEADER = "# Managed by provision bootstrap"


class BootstrapFailed(ProvisionError):
    """Auth failed, host key changed, no sudo: one line, never the password."""


class _ConnectionDropped(HostsUnreachable):
    """Refused or reset before the handshake: worth another try (not so a timeout)."""


@dataclass(frozen=True)
class BootstrapRequest:
    user: str
    host: str
    port: int = 22
    password: str | None = field(default=None, repr=False)
    identity: Path | None = None
    admin: str = "provision"
    public_key: str = ""
    private_key: Path | None = None
    known_hosts: Path = Path("~/.config/provision/known_hosts")
    host_key_policy: str = "accept-new"
    name: str | None = None

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def inventory_name(self) -> str:
        return self.name or self.host


@dataclass(frozen=True)
class BootstrapResult:
    changes: tuple[str, ...]
    entry: dict[str, Any]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def with_keys(request: BootstrapRequest, public_key: Path | None) -> BootstrapRequest:
    """The request with the key to install: `public_key`, or the project's own (paths.PROJECT_KEY, made on first
    use). The private key beside it, when there is one, goes into the inventory entry; paths become absolute."""
    from provision import paths

    private_key = None
    if public_key is None:
        private_key = ensure_project_key(paths.PROJECT_KEY.expanduser())
        public_key = private_key.with_name(private_key.name + ".pub")
    elif public_key.suffix == ".pub" and public_key.with_suffix("").exists():
        private_key = public_key.with_suffix("")
    return replace(
        request,
        public_key=read_public_key(public_key),
        private_key=private_key.resolve() if private_key else None,
        known_hosts=request.known_hosts.expanduser().resolve(),
    )


def parse_target(target: str) -> tuple[str, str]:
    """USER@HOST -> (user, host); a bracketed IPv6 host loses its brackets."""
    user, sep, host = target.rpartition("@")
    host = host.strip("[]")
    if not sep or not user or not host or any(c.isspace() for c in target):
        raise UsageError(f"{target!r}: expected USER@HOST, e.g. root@203.0.113.7")
    return user, host


def ensure_project_key(path: Path) -> Path:
    """Our key pair (private at `path`, public at path.pub), made with ssh-keygen on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "provision", "-f", str(path)],
                check=True,
                capture_output=True,
            )
        except FileNotFoundError as exc:
            raise EnvironmentProblem("ssh-keygen not found; install the OpenSSH client") from exc
        except subprocess.CalledProcessError as exc:
            raise EnvironmentProblem(f"ssh-keygen could not make {path}: {exc.stderr.decode().strip()}") from exc
    return path


def read_public_key(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"--key {path}: cannot read it ({exc.strerror})") from exc
    if len(text.splitlines()) != 1 or not re.match(r"^(ssh-|ecdsa-|sk-)\S+ [A-Za-z0-9+/=]+( .*)?$", text):
        raise UsageError(f"--key {path}: not an OpenSSH public key (one line, such as ssh-ed25519 AAAA... comment)")
    return text


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def inventory_entry(request: BootstrapRequest) -> dict[str, Any]:
    """The host's inventory variables, as `provision up` needs them after the bootstrap."""
    entry: dict[str, Any] = {"ansible_host": request.host}
    if request.port != 22:
        entry["ansible_port"] = request.port
    entry["ansible_user"] = request.admin
    if request.private_key is not None:
        entry["ansible_ssh_private_key_file"] = str(request.private_key)
    if request.host_key_policy != "no":
        entry["ansible_ssh_common_args"] = (
            f"-o UserKnownHostsFile={request.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        )
    return entry


def append_to_inventory(path: Path, name: str, entry: dict[str, Any]) -> bool:
    """Put the host under all.hosts in a YAML inventory (made if missing); False when it is already there."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    except yaml.YAMLError as exc:
        raise UsageError(f"--inventory-append {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    data = data or {}
    if not isinstance(data, dict) or not isinstance(data.setdefault("all", {}) or {}, dict):
        raise UsageError(f"--inventory-append {path}: expected a YAML inventory with an 'all' group")
    group = data["all"] = data["all"] or {}
    hosts = group.setdefault("hosts", {}) or {}
    if hosts.get(name) == entry:
        return False
    hosts[name] = entry
    group["hosts"] = hosts
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return True


def remote_script(admin: str, public_key: str) -> str:
    """Idempotent POSIX sh, run as root: prints one 'changed: ...' line per change it makes."""
    return f"""set -eu
admin={shlex.quote(admin)}
key={shlex.quote(public_key)}
header={shlex.quote(HEADER)}
if ! id -u "$admin" >/dev/null 2>&1; then
    useradd --create-home --shell "$(command -v bash || echo /bin/sh)" "$admin"
    echo "changed: created user $admin"
fi
home=$(getent passwd "$admin" | cut -d: -f6)
group=$(id -gn "$admin")
if [ ! -d "$home/.ssh" ]; then
    install -d -m 0700 -o "$admin" -g "$group" "$home/.ssh"
    echo "changed: created $home/.ssh"
fi
ak="$home/.ssh/authorized_keys"
if ! grep -qxF "$key" "$ak" 2>/dev/null; then
    printf '%s\\n' "$key" >> "$ak"
    echo "changed: added the provision key to $ak"
fi
if [ "$(stat -c %U:%a "$ak")" != "$admin:600" ]; then
    chown "$admin:$group" "$ak"
    chmod 0600 "$ak"
    echo "changed: owner and mode of $ak"
fi
if command -v restorecon >/dev/null 2>&1; then
    restorecon -R "$home/.ssh"
fi
if ! grep -Eq '^[@#]includedir[[:space:]]+/etc/sudoers.d' /etc/sudoers; then
    echo "error: /etc/sudoers does not read /etc/sudoers.d; add '@includedir /etc/sudoers.d' with visudo" >&2
    exit 3
fi
sudoers=/etc/sudoers.d/90-provision-$admin
tmp=$(mktemp /etc/sudoers.d/.provision.XXXXXX)
trap 'rm -f "$tmp"' EXIT
printf '%s\\n%s ALL=(ALL) NOPASSWD: ALL\\n' "$header" "$admin" > "$tmp"
chmod 0440 "$tmp"
if ! cmp -s "$tmp" "$sudoers" || [ "$(stat -c %U:%a "$sudoers")" != "root:440" ]; then
    visudo -cqf "$tmp" >/dev/null
    mv -f "$tmp" "$sudoers"
    echo "changed: wrote $sudoers (checked with visudo -c)"
fi
if ! command -v python3 >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends python3 >/dev/null
    elif command -v dnf >/dev/null 2>&1; then
        dnf -q -y install python3 >/dev/null
    else
        echo "error: python3 is missing and neither apt-get nor dnf is there to install it" >&2
        exit 3
    fi
    echo "changed: installed python3"
fi
"""


class _HostKeyPolicy:
    """paramiko's missing-host-key hook: accept-new records the key, yes refuses, no accepts silently."""

    def __init__(self, request: BootstrapRequest, log: Callable[[str], None]) -> None:
        self.request, self.log = request, log

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        policy = self.request.host_key_policy
        if policy == "yes":
            raise BootstrapFailed(
                f"{hostname}: host key not in {self.request.known_hosts} and --host-key-policy yes; "
                f"add it there (ssh-keyscan -p {self.request.port} {self.request.host}) or use accept-new"
            )
        if policy == "accept-new":
            path = self.request.known_hosts
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with path.open("a", encoding="utf-8") as out:
                out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            self.log(f"recorded the host key of {hostname} ({key.get_name()}) in {path}")


def _connect(request: BootstrapRequest, log: Callable[[str], None]) -> paramiko.SSHClient:
    """Connect, retrying while sshd is (re)starting: a fresh cloud VM's cloud-init restarts it at first boot."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return _connect_once(request, log)
        except _ConnectionDropped:
            if attempt == CONNECT_ATTEMPTS:
                raise
            time.sleep(attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _connect_once(request: BootstrapRequest, log: Callable[[str], None]) -> paramiko.SSHClient:
    import paramiko

    # paramiko reports a failed handshake with a traceback on stderr; our one-line error says it all.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    client = paramiko.SSHClient()
    if request.host_key_policy != "no" and request.known_hosts.exists():
        client.load_host_keys(str(request.known_hosts))
    client.set_missing_host_key_policy(_HostKeyPolicy(request, log))
    where = request.target
    try:
        client.connect(
            request.host,
            port=request.port,
            username=request.user,
            password=request.password,
            key_filename=str(request.identity) if request.identity else None,
            look_for_keys=request.password is None and request.identity is None,
            allow_agent=request.password is None and request.identity is None,
            timeout=CONNECT_TIMEOUT,
            banner_timeout=CONNECT_TIMEOUT,
            auth_timeout=CONNECT_TIMEOUT,
        )
    except paramiko.BadHostKeyException as exc:
        name = known_hosts_name(request.host, request.port)
        raise BootstrapFailed(
            f"{where}: host key changed (now {exc.key.get_name()} {exc.key.get_fingerprint().hex()}), which may be "
            f"an attack; if the host was rebuilt: ssh-keygen -R '{name}' -f {request.known_hosts}"
        ) from None
    except paramiko.AuthenticationException:
        how = "password" if request.password is not None else f"key {request.identity or '(agent/default keys)'}"
        raise BootstrapFailed(f"{where}: authentication failed ({how})") from None
    except TimeoutError:
        raise HostsUnreachable(
            f"{where}: timed out after {CONNECT_TIMEOUT:.0f}s; check the address, port and firewall"
        ) from None
    except (paramiko.SSHException, OSError) as exc:
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise _ConnectionDropped(f"{where}: cannot connect ({reason})") from None
    return client


def _run(client: paramiko.SSHClient, command: str, stdin: str = "") -> tuple[int, str, str]:
    chan_in, chan_out, chan_err = client.exec_command(command, timeout=COMMAND_TIMEOUT)
    if stdin:
        chan_in.write(stdin)
    chan_in.channel.shutdown_write()
    out, err = chan_out.read().decode(errors="replace"), chan_err.read().decode(errors="replace")
    return chan_out.channel.recv_exit_status(), out, err


def bootstrap(request: BootstrapRequest, log: Callable[[str], None]) -> BootstrapResult:
    """Connect, become root, create the admin user with the key and sudo, install python3 if missing."""
    if not ADMIN_NAME.match(request.admin):
        raise UsageError(f"--admin {request.admin!r}: a user name is lower case letters, digits, _ and -")
    if request.host_key_policy not in HOST_KEY_POLICIES:
        raise UsageError(f"--host-key-policy must be one of {', '.join(HOST_KEY_POLICIES)}")
    script = remote_script(request.admin, request.public_key)
    client = _connect(request, log)
    try:
        if request.user == "root":
            code, out, err = _run(client, "sh -s", script)
        elif _run(client, "sudo -n true")[0] == 0:
            code, out, err = _run(client, "sudo -n sh -s", script)
        elif request.password is not None and _run(client, "sudo -S -p '' true", request.password + "\n")[0] == 0:
            # sudo reads the password from stdin (-S, no prompt), then sh reads the script.
            code, out, err = _run(client, "sudo -S -p '' sh -s", request.password + "\n" + script)
        else:
            raise BootstrapFailed(
                f"{request.target}: {request.user} cannot become root with sudo"
                f"{'' if request.password is not None else ' without a password (try --password-stdin)'}"
            )
    finally:
        client.close()
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit {code}"
        raise BootstrapFailed(f"{request.target}: the bootstrap script failed: {detail}")
    changes = tuple(line.removeprefix("changed: ") for line in out.splitlines() if line.startswith("changed: "))
    return BootstrapResult(changes=changes, entry=inventory_entry(request))


def password_login_offered(host: str, port: int, user: str, timeout: float = CONNECT_TIMEOUT) -> list[str]:
    """The authentication methods the server offers `user`, learnt without sending any credential.

    `provision test` uses it: a hardened host offers publickey only, never password or keyboard-interactive.
    """
    import paramiko

    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        try:
            transport.auth_none(user)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        return ["none"]
    finally:
        transport.close()
