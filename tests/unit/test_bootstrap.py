"""provision bootstrap without a host: target parsing, the inventory entry, the remote script, errors."""

import os
import pty
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import terminal as terminal_io
import yaml

from provision import bootstrap
from provision.errors import UsageError


def request(**kw: object) -> bootstrap.BootstrapRequest:
    base: dict[str, object] = {"user": "root", "host": "203.0.113.7", "admin": "ops"}
    base["public_key"] = "ssh-ed25519 AAAA x"
    return bootstrap.BootstrapRequest(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "expected"),
    [("root@203.0.113.7", ("root", "203.0.113.7")), ("opc@[2001:db8::1]", ("opc", "2001:db8::1"))],
)
def test_parse_target(target: str, expected: tuple[str, str]) -> None:
    assert bootstrap.parse_target(target) == expected


@pytest.mark.parametrize("target", ["203.0.113.7", "@host", "root@", "ro ot@host"])
def test_parse_target_refuses(target: str) -> None:
    with pytest.raises(UsageError, match="expected USER@HOST"):
        bootstrap.parse_target(target)


def test_password_is_not_in_the_request_repr() -> None:
    assert "s3cret" not in repr(request(password="s3cret"))


def test_inventory_entry_names_user_port_key_and_known_hosts(tmp_path: Path) -> None:
    entry = bootstrap.inventory_entry(
        request(port=2222, private_key=tmp_path / "id", known_hosts=tmp_path / "kh", host_key_policy="accept-new")
    )
    assert entry == {
        "ansible_host": "203.0.113.7",
        "ansible_port": 2222,
        "ansible_user": "ops",
        "ansible_ssh_private_key_file": str(tmp_path / "id"),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={tmp_path / 'kh'} -o StrictHostKeyChecking=yes"
        " -o IdentitiesOnly=yes",
    }


def test_append_to_inventory_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"other": {"ansible_host": "198.51.100.1"}}}}))
    entry = {"ansible_host": "203.0.113.7", "ansible_user": "ops"}
    assert bootstrap.append_to_inventory(path, "gpu1", entry) is True
    assert bootstrap.append_to_inventory(path, "gpu1", entry) is False
    hosts = yaml.safe_load(path.read_text())["all"]["hosts"]
    assert hosts == {"other": {"ansible_host": "198.51.100.1"}, "gpu1": entry}


def test_append_to_inventory_refuses_a_list(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text("- a\n")
    with pytest.raises(UsageError, match="expected a YAML inventory"):
        bootstrap.append_to_inventory(path, "gpu1", {})


def test_remote_script_is_valid_sh_and_quotes_its_inputs() -> None:
    script = bootstrap.remote_script("ops", "ssh-ed25519 AAAA it's $(me)")
    assert subprocess.run(["sh", "-n"], input=script, text=True, check=False).returncode == 0
    assert "key='ssh-ed25519 AAAA it'\"'\"'s $(me)'" in script
    assert "visudo -cqf" in script and "NOPASSWD" in script


def test_bootstrap_refuses_a_bad_admin_name_before_connecting() -> None:
    with pytest.raises(UsageError, match="--admin"):
        bootstrap.bootstrap(request(admin="Root Admin"), log=print)


def test_read_public_key_refuses_a_private_key(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(UsageError, match="not an OpenSSH public key"):
        bootstrap.read_public_key(key)


def test_ensure_project_key_makes_a_pair_once(tmp_path: Path) -> None:
    key = bootstrap.ensure_project_key(tmp_path / "cfg" / "id_ed25519")
    first = key.read_bytes()
    assert bootstrap.read_public_key(key.with_name("id_ed25519.pub")).startswith("ssh-ed25519 ")
    assert bootstrap.ensure_project_key(key).read_bytes() == first


def test_unreachable_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Exception, match=rf"^root@127.0.0.1:{port}: cannot connect") as info:
        bootstrap.bootstrap(request(host="127.0.0.1", port=port, known_hosts=tmp_path / "kh"), log=print)
    assert "\n" not in str(info.value)


def test_a_password_typed_at_a_terminal_is_not_echoed(tmp_path: Path) -> None:
    """--password-stdin on a pseudo-terminal: what the terminal shows must not hold the typed password."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]  # closed again below: the login is refused after the password is read
    password = f"typed-{secrets.token_hex(8)}"
    argv = [sys.executable, "-m", "provision", "bootstrap", "root@127.0.0.1", "--port", str(port), "--password-stdin"]
    argv += ["--key", str(tmp_path / "k.pub"), "--known-hosts", str(tmp_path / "known_hosts")]
    pid, terminal = pty.fork()
    if pid == 0:  # the child: provision, with the pseudo-terminal as its controlling terminal and stdin
        os.execve(sys.executable, argv, {**os.environ, "HOME": str(tmp_path)})
    # Type once the prompt is shown (or the program has said nothing for a while: then it does not prompt at all).
    shown = terminal_io.read_until(terminal, b"password")
    os.write(terminal, password.encode() + b"\n")
    while chunk := terminal_io.read(terminal):
        shown += chunk
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    text = shown.decode(errors="replace")
    assert password not in text, f"the password was echoed: {text!r}"
    assert "root@127.0.0.1's password:" in text
    assert os.waitstatus_to_exitcode(status) != 0 and "127.0.0.1" in text  # it went on to connect, and failed
