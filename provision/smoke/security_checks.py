"""What the ssh, selinux and firewall roles promise, as functions that list problems (see checks.py)."""

import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

SSHD = "/usr/sbin/sshd"
GETENFORCE = "/usr/sbin/getenforce"
GETSEBOOL = "/usr/sbin/getsebool"
PASSWORD_METHODS = ("password", "keyboard-interactive")
# What the ssh role's sshd -T calls ask about: a root login from the host itself.
SSHD_T = f"{SSHD} -T -C user=root,host=localhost,addr=127.0.0.1"

# Where a check says it found nothing to check (and why), which is not the same as a pass.
Note = Callable[[str], None]


def _ignore(reason: str) -> None:
    pass


def login_target(hostvars: Mapping[str, Any], fallback_host: str) -> tuple[str, int, str]:
    """(address, port, user) the inventory logs in with."""
    address = str(hostvars.get("ansible_host") or fallback_host)
    return address, int(hostvars.get("ansible_port") or 22), str(hostvars.get("ansible_user") or "root")


def sshd_config_problems(host: Any) -> list[str]:
    with host.sudo():
        result = host.run(f"{SSHD} -t")
    return [] if result.rc == 0 else [f"sshd -t failed (rc={result.rc}): {result.stderr.strip()[:300]}"]


def openssh_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `sshd -V` (9.x) or the usage message older sshd prints instead."""
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def crypto_table() -> list[Mapping[str, Any]]:
    """The ssh role's algorithm table (__ssh_crypto_lists in its vars/main.yml): the one the role writes from."""
    from provision import argcheck, paths

    return list(argcheck.role_vars(paths.ROLES / "ssh")["__ssh_crypto_lists"])


def crypto_lists(table: Sequence[Mapping[str, Any]], profile: str, version: tuple[int, int]) -> dict[str, str]:
    """{keyword: "a,b,c"}: each list's algorithms of `profile` that OpenSSH `version` has, in the table's order.

    The role's __ssh_crypto, computed from the same table; tests/golden/ssh holds both for our OpenSSH versions.
    """
    return {
        entry["keyword"]: ",".join(
            algorithm["name"]
            for algorithm in entry["algorithms"]
            if profile in algorithm["profiles"] and _version(algorithm["since"]) <= version
        )
        for entry in table
    }


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def algorithm_drift(effective: str, expected: Mapping[str, str]) -> list[str]:
    """One problem per list that `sshd -T` output differs in from the expected {keyword: "a,b,c"}."""
    lines = dict(line.split(" ", 1) for line in effective.splitlines() if " " in line)
    return [
        f"sshd offers {keyword} {lines.get(keyword.lower(), '(none)')}, expected {algorithms}"
        for keyword, algorithms in expected.items()
        if lines.get(keyword.lower()) != algorithms
    ]


def sshd_algorithm_problems(host: Any, profile: str) -> list[str]:
    """The lists sshd runs with (sshd -T) are the ssh_crypto_profile's for the host's OpenSSH version."""
    if profile == "none":
        return []
    probe = host.run(f"{SSHD} -V")
    version = openssh_version(probe.stderr + probe.stdout)
    if version is None:
        return [f"cannot tell the OpenSSH version from {SSHD} -V: {(probe.stderr + probe.stdout).strip()[:200]}"]
    with host.sudo():
        result = host.run(SSHD_T)
    if result.rc != 0:
        return [f"sshd -T failed (rc={result.rc}): {result.stderr.strip()[:300]}"]
    drift = algorithm_drift(result.stdout, crypto_lists(crypto_table(), profile, version))
    where = f"ssh_crypto_profile {profile} for OpenSSH {version[0]}.{version[1]}; provision up restores it"
    return [f"{problem} ({where})" for problem in drift]


def password_login_problems(address: str, port: int, user: str) -> list[str]:
    """The server must offer no password method; asked without sending any credential."""
    from provision.bootstrap import password_login_offered

    try:
        offered = password_login_offered(address, port, user)
    except OSError as exc:
        return [f"cannot reach sshd at {address}:{port}: {exc}"]
    allowed = [m for m in offered if m in PASSWORD_METHODS or m == "none"]
    return [f"sshd at {address}:{port} offers {', '.join(allowed)} to {user}"] if allowed else []


def key_login_argv(hostvars: Mapping[str, Any], fallback_host: str) -> list[str]:
    """A fresh ssh login as the inventory describes it (no shared connection, no password prompt)."""
    address, port, user = login_target(hostvars, fallback_host)
    argv = ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes"]
    argv += ["-o", "ConnectTimeout=15", "-p", str(port)]
    key = hostvars.get("ansible_ssh_private_key_file")
    if key:
        argv += ["-o", "IdentitiesOnly=yes", "-i", str(key)]
    for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        argv += shlex.split(str(hostvars.get(name) or ""))
    return [*argv, f"{user}@{address}", "true"]


def key_login_problems(argv: list[str]) -> list[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return [f"a fresh key login failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}"]
    return []


def selinux_problems(
    host: Any, state: str, booleans: list[dict[str, Any]], nothing_to_check: Note = _ignore
) -> list[str]:
    # Full paths: /usr/sbin is not on a non-root login's PATH on Debian, and a miss here would pass vacuously.
    installed = host.file(GETENFORCE).exists
    mode = host.run(GETENFORCE).stdout.strip().lower() if installed else "disabled"
    if mode == "disabled":
        found = "SELinux is disabled" if installed else f"SELinux is not installed ({GETENFORCE} is missing)"
        if state in ("enforcing", "permissive"):
            return [f"{found}, selinux_state asks for {state}"]
        if not state:
            nothing_to_check(f"{found} and selinux_state asks for no mode: the selinux role changes nothing here")
        return []
    problems = []
    if state and mode != state:
        problems.append(f"SELinux is {mode}, selinux_state asks for {state}")
    for boolean in booleans:
        want = "on" if boolean["state"] else "off"
        got = host.run(f"{GETSEBOOL} {shlex.quote(boolean['name'])}").stdout.strip().rsplit(" ", 1)[-1]
        if got != want:
            problems.append(f"SELinux boolean {boolean['name']} is {got or 'unknown'}, expected {want}")
    return problems


def firewall_ports(hostvars: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """firewall_ports plus, on gateway hosts, nginx's ports: what the firewall role opens besides sshd's port."""
    ports = list(hostvars.get("firewall_ports") or [])
    if hostvars.get("firewall_open_gateway", True) and "gateway" in (hostvars.get("group_names") or []):
        listed = {int(p["port"]) for p in ports}
        nginx = [int(hostvars.get("nginx_port") or 80)]
        if hostvars.get("nginx_tls"):
            nginx.append(int(hostvars.get("nginx_tls_port") or 443))
        ports += [{"port": port} for port in dict.fromkeys(nginx) if port not in listed]
    return ports


def iptables_rule(port: Mapping[str, Any]) -> str:
    """The role's rule for a port, as iptables -S prints it (and OCI's rules.v4 writes it)."""
    proto = port.get("proto") or "tcp"
    return f"-A INPUT -p {proto} -m state --state NEW -m {proto} --dport {port['port']} -j ACCEPT"


def firewall_problems(
    host: Any, ports: list[Mapping[str, Any]], rules_file: str, nothing_to_check: Note = _ignore
) -> list[str]:
    """Each configured port is open in the host's own firewall, live and after a reboot."""
    if not ports:
        nothing_to_check("no ports to check: firewall_ports is empty and the host is not in the gateway group")
        return []
    problems = []
    with host.sudo():
        if host.service("firewalld").is_running:
            for port in ports:
                spec = f"{port['port']}/{port.get('proto') or 'tcp'}"
                for where in ("", "--permanent "):
                    if host.run(f"firewall-cmd {where}--query-port={spec}").rc != 0:
                        problems.append(f"firewalld {where.strip() or 'runtime'}: port {spec} is not open")
            return problems
        saved = host.file(rules_file).content_string.splitlines() if host.file(rules_file).exists else []
        if not any(line.startswith("-A INPUT") and "-j REJECT" in line for line in saved):
            nothing_to_check(
                f"no host firewall: firewalld is not running and {rules_file} has no REJECT rule "
                "(the cloud's security list is the only firewall)"
            )
            return []
        live = host.run("iptables -S INPUT").stdout.splitlines()
    for port in ports:
        rule = iptables_rule(port)
        for name, lines in (("live INPUT chain", live), (rules_file, saved)):
            if not _before_reject(rule, lines):
                problems.append(f"{name}: {rule!r} missing or after the REJECT")
    return problems


def _before_reject(rule: str, lines: list[str]) -> bool:
    rejects = [i for i, line in enumerate(lines) if line.startswith("-A INPUT") and "-j REJECT" in line]
    return rule in lines and (not rejects or lines.index(rule) < rejects[0])
