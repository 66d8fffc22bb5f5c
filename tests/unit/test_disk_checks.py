"""The disks smoke checks must be able to fail: fed fstab texts and a fake host, they find each problem."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from provision.smoke import disk_checks

UUID = "0b2c2a64-5cd4-4c0a-9d7b-3f3c2d9b1a10"
OTHER = "9f1e7c1a-2b3c-4d5e-8f90-123456789abc"
OURS = f"UUID={UUID} /srv/models ext4 defaults,nofail,x-systemd.device-timeout=90s 0 2\n"
ROOT = "/dev/vda / ext4 errors=remount-ro 0 1\n"


def fstab(text: str) -> list[disk_checks.FstabLine]:
    return disk_checks.parse_fstab(text)


@dataclass
class Result:
    rc: int
    stdout: str = ""


@dataclass
class FakeHost:
    """Answers findmnt and `test -w` like a host would; records who ran what."""

    mounted: dict[str, str]  # mount point -> "UUID SOURCE"
    writable_by: dict[str, set[str]] = field(default_factory=dict)
    user: str = "debian"
    ran: list[tuple[str, str]] = field(default_factory=list)

    @contextmanager
    def sudo(self, user: str = "root") -> Iterator[None]:
        before, self.user = self.user, user
        try:
            yield
        finally:
            self.user = before

    def run(self, command: str) -> Result:
        self.ran.append((self.user, command))
        path = command.split()[-1].strip("'")
        if command.startswith("findmnt"):
            return Result(0, self.mounted[path] + "\n") if path in self.mounted else Result(1)
        if command.startswith("test -w"):
            return Result(0 if self.user in self.writable_by.get(path, set()) else 1)
        raise AssertionError(f"unexpected command {command}")


MODELS = disk_checks.DataMount("/srv/models", "debian")


def test_a_good_mount_passes_and_checks_as_the_owner() -> None:
    host = FakeHost({"/srv/models": f"{UUID} /dev/vdb"}, {"/srv/models": {"debian"}})
    assert disk_checks.data_disk_problems(host, MODELS, fstab(ROOT + OURS)) == []
    assert ("root", "findmnt --noheadings --raw --output UUID,SOURCE --mountpoint /srv/models") in host.ran
    assert ("debian", "test -w /srv/models") in host.ran


def test_not_mounted_fails() -> None:
    assert disk_checks.data_disk_problems(FakeHost({}), MODELS, fstab(OURS)) == ["/srv/models is not mounted"]


def test_wrong_uuid_duplicates_missing_nofail_and_not_writable_fail() -> None:
    host = FakeHost({"/srv/models": f"{OTHER} /dev/vdc"}, {"/srv/models": {"root"}})
    problems = disk_checks.data_disk_problems(host, MODELS, fstab(ROOT + OURS))
    assert problems == [
        f"/etc/fstab:2 mounts UUID={UUID} at /srv/models, but UUID={OTHER} is mounted there",
        "/srv/models is not writable by its owner debian",
    ]
    assert disk_checks.fstab_problems(fstab(OURS + OURS), "/srv/models", UUID) == [
        "/etc/fstab has 2 lines for /srv/models (lines 1, 2), expected 1"
    ]
    assert disk_checks.fstab_problems(fstab(f"UUID={UUID} /srv/models ext4 defaults 0 2\n"), "/srv/models", UUID) == [
        "/etc/fstab:1 (/srv/models) lacks nofail: a missing disk would stop the boot",
        "/etc/fstab:1 (/srv/models) lacks x-systemd.device-timeout=",
    ]
    assert disk_checks.fstab_problems(fstab(ROOT), "/srv/models", UUID) == [
        "/etc/fstab has 0 lines for /srv/models, expected 1"
    ]


def test_with_nothing_configured_leftover_lines_are_found() -> None:
    lines = fstab(ROOT + OURS + "UUID=abc /mnt ext4 defaults,nofail 0 2\n")
    assert disk_checks.configured_mounts({"disks_devices": [], "disks_auto": False}, lines) == []
    assert disk_checks.stray_fstab_problems(lines, []) == [
        f"/etc/fstab:2 mounts UUID={UUID} at /srv/models with nofail and a device timeout, "
        "but no disks_devices entry (or disks_auto) asks for that mount point"
    ]
    assert disk_checks.stray_fstab_problems(fstab(ROOT), []) == []


def test_configured_mounts_from_devices_and_auto() -> None:
    auto = f"UUID={OTHER} /data1 ext4 defaults,nofail,x-systemd.device-timeout=90s 0 2\n"
    lines = fstab(ROOT + OURS + auto)
    variables: dict[str, Any] = {
        "disks_devices": [{"serial": "lab1-data", "mount": "/srv/models", "owner": "debian"}],
        "disks_auto": True,
        "disks_auto_mount_prefix": "/data",
    }
    assert disk_checks.configured_mounts(variables, lines) == [MODELS, disk_checks.DataMount("/data1", "root")]
    assert disk_checks.stray_fstab_problems(lines, disk_checks.configured_mounts(variables, lines)) == []
    variables["disks_auto"] = False
    assert len(disk_checks.stray_fstab_problems(lines, disk_checks.configured_mounts(variables, lines))) == 1


def test_parse_fstab_unescapes_spaces() -> None:
    (line,) = fstab("UUID=x /srv/my\\040models ext4 defaults,nofail 0 2 # comment\n")
    assert (line.mount, line.options) == ("/srv/my models", ("defaults", "nofail"))
