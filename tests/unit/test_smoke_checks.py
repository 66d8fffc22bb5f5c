"""The smoke suite's checks must be able to fail: run them on this machine against a fake /etc/apt."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra

from provision.smoke import checks

Write = Callable[[str, str], Path]
MIRROR = "http://10.0.2.2:3142/deb.debian.org/debian"
SECURITY = "http://10.0.2.2:3142/deb.debian.org/debian-security"
OURS = f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
OURS += f"Types: deb\nURIs: {SECURITY}\nSuites: bookworm-security\nComponents: main\n"


@pytest.fixture(scope="module")
def local() -> Any:
    return testinfra.get_host("local://")


def mirror_problems(local: Any, tmp_path: Path, mirror: str = MIRROR) -> list[str]:
    return checks.mirror_problems(local, mirror, allowed=(SECURITY,), apt_dir=str(tmp_path / "apt"))


def test_clean_mirror_setup_passes(local: Any, write: Write, tmp_path: Path) -> None:
    write("apt/sources.list.d/provision.sources", OURS)
    write("apt/sources.list", "# deb http://deb.debian.org/debian bookworm main\n\n")
    write("apt/sources.list.d/debian.sources", "Types: deb\nURIs: http://deb.debian.org/debian\nEnabled: no\n")
    write("apt/sources.list.d/debian.sources.provision-disabled", "Types: deb\nURIs: http://elsewhere/\n")
    write("apt/sources.list.d/extra.list", f"deb [arch=amd64 signed-by=/k.gpg] {MIRROR} bookworm contrib\n")
    assert mirror_problems(local, tmp_path) == []


def test_stray_source_fails(local: Any, write: Write, tmp_path: Path) -> None:
    write("apt/sources.list.d/provision.sources", OURS)
    write("apt/sources.list", "deb http://deb.debian.org/debian bookworm main  # still enabled\n")
    write("apt/sources.list.d/ubuntu.sources", "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu\n")
    problems = mirror_problems(local, tmp_path)
    assert len(problems) == 2
    assert "sources.list has an enabled source http://deb.debian.org/debian" in problems[0]
    assert "ubuntu.sources has an enabled source http://archive.ubuntu.com/ubuntu" in problems[1]


def test_missing_or_wrong_provision_sources_fails(local: Any, write: Write, tmp_path: Path) -> None:
    (tmp_path / "apt/sources.list.d").mkdir(parents=True)
    assert "provision.sources is missing" in mirror_problems(local, tmp_path)[0]
    write("apt/sources.list.d/provision.sources", "Types: deb\nURIs: http://other/debian\n")
    assert mirror_problems(local, tmp_path) == [
        f"{tmp_path}/apt/sources.list.d/provision.sources does not mention {MIRROR}"
    ]


def test_without_mirror_provision_sources_must_not_exist(local: Any, write: Write, tmp_path: Path) -> None:
    (tmp_path / "apt/sources.list.d").mkdir(parents=True)
    assert mirror_problems(local, tmp_path, mirror="") == []
    write("apt/sources.list.d/provision.sources", OURS)
    assert "exists although base_apt_mirror is empty" in mirror_problems(local, tmp_path, mirror="")[0]


def test_enabled_uris_formats() -> None:
    one_line = "deb [ arch=amd64 ] http://a/ x main\ndeb-src http://b/ x main\n#deb http://c/ x\nfoo\n"
    assert checks.enabled_uris("x.list", one_line) == ["http://a/", "http://b/"]
    deb822 = "# comment\nTypes: deb\nURIs: http://a/ http://b/\nSigned-By:\n -----BEGIN\n .\n\n \nURIs: http://c/\n"
    assert checks.enabled_uris("x.sources", deb822) == ["http://a/", "http://b/", "http://c/"]


@dataclass
class FakeService:
    is_running: bool
    is_enabled: bool


@dataclass
class FakeHost:
    distribution: str
    services: dict[str, FakeService]

    @property
    def system_info(self) -> Any:
        return type("SystemInfo", (), {"distribution": self.distribution})()

    def service(self, name: str) -> FakeService:
        return self.services.get(name, FakeService(False, False))


def test_sshd_checks() -> None:
    assert checks.sshd_problems(FakeHost("debian", {"ssh": FakeService(True, True)})) == []
    assert checks.sshd_problems(FakeHost("rocky", {"sshd": FakeService(True, True)})) == []
    socket_activated = {"ssh": FakeService(True, False), "ssh.socket": FakeService(True, True)}
    assert checks.sshd_problems(FakeHost("ubuntu", socket_activated)) == []
    assert checks.sshd_problems(FakeHost("debian", {"sshd": FakeService(True, True)})) == [
        "ssh.service is not running",
        "neither ssh.service nor ssh.socket is enabled",
    ]


def test_python_check_runs_on_this_machine(local: Any) -> None:
    assert checks.python_problems(local) == []


def test_serving_checks_are_left_out_not_skipped_on_hosts_outside_their_group(tmp_path: Path) -> None:
    """`provision test` on a whole inventory must report nothing skipped: hosts the serving plays leave alone
    do not get the serving checks at all, members of each group get that group's check."""
    import subprocess
    import sys

    from provision import smoke
    from provision.tools import ansible_env

    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    plain1: {ansible_connection: local}\n  children:\n"
        "    inference:\n      hosts:\n        served1: {ansible_connection: local}\n"
        "    gateway:\n      hosts:\n        gate1: {ansible_connection: local}\n"
    )
    argv = [sys.executable, "-m", "pytest", str(Path(smoke.__file__).parent), "-p", "no:cacheprovider", "-q"]
    argv += ["--collect-only", "--hosts=ansible://all", f"--ansible-inventory={inventory}", "-k", "serving"]
    proc = subprocess.run(argv, env={**os.environ, **ansible_env()}, capture_output=True, text=True, check=False)
    collected = sorted(line.split("/smoke/", 1)[-1] for line in proc.stdout.splitlines() if "::" in line)
    assert collected == [
        "test_serving.py::test_every_replica_runs_and_answers[ansible://served1]",
        "test_serving.py::test_gateway_config_valid_and_streams_unbuffered[ansible://gate1]",
    ], proc.stdout + proc.stderr


def test_a_pending_reboot_is_reported_with_its_reason(local: Any, write: Write, tmp_path: Path) -> None:
    path = tmp_path / "run/provision/reboot-required"
    assert checks.reboot_pending_problems(local, str(path)) == []
    write("run/provision/reboot-required", "nvidia: nouveau is in memory\n")
    assert checks.reboot_pending_problems(local, str(path)) == [
        f"a reboot is pending ({path}): nvidia: nouveau is in memory"
    ]
