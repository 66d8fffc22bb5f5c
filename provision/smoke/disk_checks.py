"""What the disks role must leave behind, as functions that list problems (empty list: all is well).

Each configured mount is mounted from the filesystem UUID that its one fstab line names, that line has
nofail and x-systemd.device-timeout=, and the mount's owner can write to it. fstab lines that look like the
role's (UUID=, nofail, x-systemd.device-timeout=) but whose mount point is not configured are problems too:
with no disks configured, that is what the check checks. Unit tests feed these functions fake hosts.
"""

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FSTAB = "/etc/fstab"
TIMEOUT_OPTION = "x-systemd.device-timeout="


@dataclass(frozen=True)
class FstabLine:
    number: int
    source: str
    mount: str
    options: tuple[str, ...]

    @property
    def managed_look(self) -> bool:
        """Written the way the disks role writes its lines."""
        return (
            self.source.startswith("UUID=")
            and "nofail" in self.options
            and any(o.startswith(TIMEOUT_OPTION) for o in self.options)
        )


@dataclass(frozen=True)
class DataMount:
    mount: str
    owner: str


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_fstab(text: str) -> list[FstabLine]:
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3:
            options = tuple(fields[3].split(",")) if len(fields) > 3 else ("defaults",)
            lines.append(FstabLine(number, _unescape(fields[0]), _unescape(fields[1]), options))
    return lines


def configured_mounts(variables: Mapping[str, Any], fstab: list[FstabLine]) -> list[DataMount]:
    """The mounts the disks role was asked for: disks_devices, plus the auto mounts fstab records."""
    mounts = [DataMount(str(d["mount"]), str(d.get("owner") or "root")) for d in variables.get("disks_devices") or []]
    if variables.get("disks_auto"):
        prefix = str(variables.get("disks_auto_mount_prefix") or "/data").rstrip("/")
        pattern = re.compile(rf"^{re.escape(prefix)}\d*$")
        named = {m.mount for m in mounts}
        mounts += [
            DataMount(line.mount, "root")
            for line in fstab
            if line.managed_look and pattern.match(line.mount) and line.mount not in named
        ]
    return mounts


def stray_fstab_problems(fstab: list[FstabLine], configured: list[DataMount]) -> list[str]:
    """fstab lines written like the role's whose mount point is not configured (a disk dropped from the list)."""
    wanted = {m.mount for m in configured}
    return [
        f"{FSTAB}:{line.number} mounts {line.source} at {line.mount} with nofail and a device timeout, "
        "but no disks_devices entry (or disks_auto) asks for that mount point"
        for line in fstab
        if line.managed_look and line.mount not in wanted
    ]


def fstab_problems(fstab: list[FstabLine], mount: str, uuid: str) -> list[str]:
    """Exactly one fstab line for `mount`, naming UUID=`uuid`, with nofail and x-systemd.device-timeout=."""
    lines = [line for line in fstab if line.mount == mount]
    if len(lines) != 1:
        where = ", ".join(str(line.number) for line in lines)
        return [f"{FSTAB} has {len(lines)} lines for {mount}{' (lines ' + where + ')' if lines else ''}, expected 1"]
    (line,) = lines
    problems = []
    if line.source != f"UUID={uuid}":
        problems.append(f"{FSTAB}:{line.number} mounts {line.source} at {mount}, but UUID={uuid} is mounted there")
    if "nofail" not in line.options:
        problems.append(f"{FSTAB}:{line.number} ({mount}) lacks nofail: a missing disk would stop the boot")
    if not any(o.startswith(TIMEOUT_OPTION) for o in line.options):
        problems.append(f"{FSTAB}:{line.number} ({mount}) lacks {TIMEOUT_OPTION}")
    return problems


def data_disk_problems(host: Any, mount: DataMount, fstab: list[FstabLine]) -> list[str]:
    """One configured mount on a real host: mounted, by the UUID fstab names, once, writable by its owner."""
    with host.sudo():
        found = host.run(f"findmnt --noheadings --raw --output UUID,SOURCE --mountpoint {shlex.quote(mount.mount)}")
    if found.rc != 0 or not found.stdout.strip():
        return [f"{mount.mount} is not mounted"]
    uuid, _, source = found.stdout.strip().splitlines()[0].partition(" ")
    if not uuid:
        return [f"{mount.mount} is mounted from {source}, which has no filesystem UUID"]
    problems = fstab_problems(fstab, mount.mount, uuid)
    with host.sudo(mount.owner):
        writable = host.run(f"test -w {shlex.quote(mount.mount)}")
    if writable.rc != 0:
        problems.append(f"{mount.mount} is not writable by its owner {mount.owner}")
    return problems
