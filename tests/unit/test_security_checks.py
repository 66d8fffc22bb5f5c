"""The security smoke checks' pure parts: the rule text, its place before the REJECT, the login argv, and the
sshd algorithm lists against a fake host."""

import contextlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from provision.smoke import security_checks as sec

OCI = [
    "-P INPUT ACCEPT",
    "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -j REJECT --reject-with icmp-host-prohibited",
]


def test_iptables_rule_matches_the_oci_form() -> None:
    assert sec.iptables_rule({"port": 22}) == OCI[2]
    assert sec.iptables_rule({"port": 53, "proto": "udp"}).startswith("-A INPUT -p udp -m state --state NEW -m udp")


def test_rule_must_come_before_the_reject() -> None:
    rule = sec.iptables_rule({"port": 8080})
    assert sec._before_reject(rule, [*OCI[:3], rule, OCI[3]])
    assert not sec._before_reject(rule, [*OCI, rule])
    assert not sec._before_reject(rule, OCI)


def test_key_login_argv_uses_no_shared_connection_and_the_inventory_args() -> None:
    argv = sec.key_login_argv(
        {
            "ansible_host": "127.0.0.1",
            "ansible_port": 2203,
            "ansible_user": "ops",
            "ansible_ssh_private_key_file": "/k/id",
            "ansible_ssh_common_args": "-o UserKnownHostsFile='/a b/kh' -o StrictHostKeyChecking=yes",
        },
        "lab3",
    )
    assert argv[:7] == ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes"]
    assert "UserKnownHostsFile=/a b/kh" in argv and argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "2203"]
    assert argv[-2:] == ["ops@127.0.0.1", "true"]


def test_gateway_hosts_also_check_nginx_ports() -> None:
    gateway = {"group_names": ["inference", "gateway"], "firewall_ports": [{"port": 9100}], "nginx_port": 8080}
    assert [p["port"] for p in sec.firewall_ports(gateway)] == [9100, 8080]
    tls = {**gateway, "nginx_tls": True, "nginx_tls_port": 8443, "firewall_ports": [{"port": 8080}]}
    assert [p["port"] for p in sec.firewall_ports(tls)] == [8080, 8443]
    assert [p["port"] for p in sec.firewall_ports({**gateway, "firewall_open_gateway": False})] == [9100]
    assert [p["port"] for p in sec.firewall_ports({**gateway, "group_names": ["inference"]})] == [9100]


# ---- SELinux and firewall checks on a fake host: a check with nothing to check says so --------------------


@dataclass
class Ran:
    rc: int = 0
    stdout: str = ""


@dataclass
class FakeFile:
    exists: bool
    content_string: str = ""


@dataclass
class FakeHost:
    files: dict[str, str] = field(default_factory=dict)  # path -> content
    commands: dict[str, Ran] = field(default_factory=dict)  # command -> result; others fail
    running: tuple[str, ...] = ()

    def file(self, path: str) -> FakeFile:
        return FakeFile(path in self.files, self.files.get(path, ""))

    def run(self, command: str) -> Ran:
        return self.commands.get(command, Ran(rc=1))

    def service(self, name: str) -> Any:
        return type("Service", (), {"is_running": name in self.running})()

    @contextlib.contextmanager
    def sudo(self) -> Iterator[None]:
        yield


def selinux_host(mode: str | None, boolean: str = "on") -> FakeHost:
    if mode is None:
        return FakeHost()
    commands = {sec.GETENFORCE: Ran(stdout=f"{mode}\n")}
    commands[f"{sec.GETSEBOOL} httpd_can_network_connect"] = Ran(stdout=f"httpd_can_network_connect --> {boolean}\n")
    return FakeHost(files={sec.GETENFORCE: ""}, commands=commands)


NETWORK = [{"name": "httpd_can_network_connect", "state": True}]


@pytest.mark.parametrize(
    ("mode", "state", "problems", "noted"),
    [
        (
            None,
            "enforcing",
            ["SELinux is not installed (/usr/sbin/getenforce is missing), selinux_state asks for enforcing"],
            False,
        ),
        (
            None,
            "permissive",
            ["SELinux is not installed (/usr/sbin/getenforce is missing), selinux_state asks for permissive"],
            False,
        ),
        ("Disabled", "enforcing", ["SELinux is disabled, selinux_state asks for enforcing"], False),
        (None, "", [], True),
        ("Disabled", "", [], True),
        (None, "disabled", [], False),
        ("Enforcing", "enforcing", [], False),
        ("Enforcing", "", [], False),
        ("Permissive", "enforcing", ["SELinux is permissive, selinux_state asks for enforcing"], False),
    ],
)
def test_selinux_check(mode: str | None, state: str, problems: list[str], noted: bool) -> None:
    notes: list[str] = []
    assert sec.selinux_problems(selinux_host(mode), state, NETWORK, notes.append) == problems
    assert bool(notes) is noted, notes


def test_selinux_check_finds_a_boolean_off() -> None:
    assert sec.selinux_problems(selinux_host("Enforcing", "off"), "enforcing", NETWORK) == [
        "SELinux boolean httpd_can_network_connect is off, expected on"
    ]


RULES = "/etc/iptables/rules.v4"


@pytest.mark.parametrize(
    ("host", "ports", "problems", "note"),
    [
        (FakeHost(), [], [], "no ports to check"),
        (FakeHost(), [{"port": 8080}], [], f"no host firewall: firewalld is not running and {RULES} has no REJECT"),
        (FakeHost(files={RULES: "\n".join(OCI[:2])}), [{"port": 8080}], [], "no host firewall"),
        (
            FakeHost(files={RULES: "\n".join(OCI)}, commands={"iptables -S INPUT": Ran(stdout="\n".join(OCI))}),
            [{"port": 22}],
            [],
            "",
        ),
        (
            FakeHost(files={RULES: "\n".join(OCI)}, commands={"iptables -S INPUT": Ran(stdout="\n".join(OCI))}),
            [{"port": 8080}],
            [
                f"live INPUT chain: {sec.iptables_rule({'port': 8080})!r} missing or after the REJECT",
                f"{RULES}: {sec.iptables_rule({'port': 8080})!r} missing or after the REJECT",
            ],
            "",
        ),
        (
            FakeHost(running=("firewalld",), commands={"firewall-cmd --query-port=80/tcp": Ran()}),
            [{"port": 80}],
            ["firewalld --permanent: port 80/tcp is not open"],
            "",
        ),
        (FakeHost(running=("firewalld",)), [], [], "no ports to check"),
    ],
    ids=["no-ports", "no-firewall", "no-reject", "open", "missing", "firewalld", "firewalld-no-ports"],
)
def test_firewall_check(host: FakeHost, ports: list[dict[str, Any]], problems: list[str], note: str) -> None:
    notes: list[str] = []
    assert sec.firewall_problems(host, ports, RULES, notes.append) == problems
    assert (notes[0] if notes else "").startswith(note) and len(notes) <= 1, notes
    if not note:
        assert notes == []


def test_nothing_to_check_is_reported_apart_from_a_pass(tmp_path: Path) -> None:
    """The smoke suite's hooks: such a test passes, but shows as "nothing to check" with its reason, in the
    terminal and in the JUnit file (as a property), and is not a skip."""
    (tmp_path / "test_example.py").write_text(
        "def test_something():\n    pass\n\n"
        "def test_nothing(nothing_to_check):\n    nothing_to_check('no host firewall here')\n"
    )
    junit = tmp_path / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "-p", "provision.smoke.conftest", "-p", "no:cacheprovider"]
    argv += ["-q", f"--junitxml={junit}", str(tmp_path / "test_example.py")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 nothing to check" in proc.stdout
    assert "NOTHING TO CHECK test_example.py::test_nothing: no host firewall here" in proc.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("skipped") == "0" and suite.get("failures") == "0"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    properties = {p.get("name"): p.get("value") for p in cases["test_nothing"].iter("property")}
    assert properties == {"nothing_to_check": "no host firewall here"}
    assert list(cases["test_something"].iter("property")) == []


# ---- sshd's algorithm lists -------------------------------------------------------------------------------

GOLDEN = Path(__file__).parent.parent / "golden" / "ssh"
# What sshd -V prints: 9.x knows the option; 8.x says it does not and prints its version with the usage.
SSHD_V = {
    "OpenSSH_9.2p1 Debian-2+deb12u6, OpenSSL 3.0.17 1 Jul 2025\n": (9, 2),
    "unknown option -- V\nOpenSSH_8.0p1, OpenSSL 1.1.1k  FIPS 25 Mar 2021\nusage: sshd [-46DdeiqTt]\n": (8, 0),
    "OpenSSH_9.6p1 Ubuntu-3ubuntu13.5, OpenSSL 3.0.13 30 Jan 2024\n": (9, 6),
    "sshd: command not found\n": None,
}


@pytest.mark.parametrize(("text", "version"), SSHD_V.items())
def test_openssh_version_from_sshd_v(text: str, version: tuple[int, int] | None) -> None:
    assert sec.openssh_version(text) == version


def sshd_t(profile_file: str, **changes: str) -> str:
    """sshd -T output around a golden profile, with some lists changed as a hand edit would."""
    lines = dict(line.split(" ", 1) for line in (GOLDEN / profile_file).read_text().splitlines())
    lines.update(changes)
    return "port 22\npasswordauthentication no\n" + "".join(f"{k} {v}\n" for k, v in lines.items())


@dataclass
class Result:
    rc: int
    stdout: str = ""
    stderr: str = ""


@dataclass
class SshdHost:
    """sshd -V (as the login user) and sshd -T (with sudo) as a Debian 12 host answers them."""

    effective: str
    version: str = "OpenSSH_9.2p1 Debian-2+deb12u6, OpenSSL 3.0.17 1 Jul 2025\n"
    sudo_on: bool = False
    ran: list[tuple[bool, str]] = field(default_factory=list)

    @contextmanager
    def sudo(self) -> Iterator[None]:
        self.sudo_on = True
        try:
            yield
        finally:
            self.sudo_on = False

    def run(self, command: str) -> Result:
        self.ran.append((self.sudo_on, command))
        if command == f"{sec.SSHD} -V":
            return Result(1, "", self.version)
        if command == sec.SSHD_T:
            return Result(0, self.effective) if self.sudo_on else Result(1, "", "sshd: no hostkeys available")
        raise AssertionError(f"unexpected command {command}")


def test_the_profile_in_place_passes() -> None:
    host = SshdHost(sshd_t("strict-9.2.txt"))
    assert sec.sshd_algorithm_problems(host, "strict") == []
    assert (True, sec.SSHD_T) in host.ran


def test_a_hand_edited_list_is_named() -> None:
    host = SshdHost(sshd_t("strict-9.2.txt", macs="hmac-sha2-256-etm@openssh.com,hmac-sha1"))
    [problem] = sec.sshd_algorithm_problems(host, "strict")
    assert problem.startswith("sshd offers MACs hmac-sha2-256-etm@openssh.com,hmac-sha1, expected hmac-sha2-512-etm")
    assert problem.endswith("(ssh_crypto_profile strict for OpenSSH 9.2; provision up restores it)")


def test_the_distro_defaults_or_another_profile_drift_in_every_list_that_differs() -> None:
    compatible = SshdHost(sshd_t("compatible-9.2.txt"))
    problems = sec.sshd_algorithm_problems(compatible, "strict")
    assert [p.split()[2] for p in problems] == ["KexAlgorithms", "HostKeyAlgorithms", "MACs"]
    assert sec.sshd_algorithm_problems(compatible, "compatible") == []
    # The lists follow the host's OpenSSH: Ubuntu 24.04's 9.6 has the same ones as Debian 12's 9.2, EL8's 8.0 fewer.
    assert sec.sshd_algorithm_problems(SshdHost(sshd_t("strict-9.2.txt"), version=list(SSHD_V)[2]), "strict") == []
    old = sec.sshd_algorithm_problems(SshdHost(sshd_t("strict-9.2.txt"), version=list(SSHD_V)[1]), "strict")
    assert [p.split()[2] for p in old] == ["KexAlgorithms"] and "for OpenSSH 8.0" in old[0]


def test_a_missing_list_and_an_unknown_version_are_problems_and_none_checks_nothing() -> None:
    text = "".join(line + "\n" for line in sshd_t("strict-9.2.txt").splitlines() if not line.startswith("ciphers "))
    assert [p.split()[:4] for p in sec.sshd_algorithm_problems(SshdHost(text), "strict")] == [
        ["sshd", "offers", "Ciphers", "(none),"]
    ]
    unknown = SshdHost(sshd_t("strict-9.2.txt"), version="sshd: command not found\n")
    assert sec.sshd_algorithm_problems(unknown, "strict") == [
        f"cannot tell the OpenSSH version from {sec.SSHD} -V: sshd: command not found"
    ]
    assert sec.sshd_algorithm_problems(SshdHost("garbage"), "none") == []
