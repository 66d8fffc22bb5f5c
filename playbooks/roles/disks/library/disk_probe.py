#!/usr/bin/python
"""Read-only probe of a host's block devices for the disks role: find each requested disk, look at what
is on it, and decide whether it may be formatted, mounted as it is, or must be left alone.

gather_host() and inspect() read the host (sysfs, /proc, /etc/fstab, blkid -p, wipefs, an O_EXCL open and a
scan for non-zero data spread over the whole device, planned by plan_scan()); everything after that (resolving
names, the verdict, auto mount points, the messages) is pure functions over plain data, unit-tested in
tests/unit/test_disk_probe.py. Nothing here writes to a device or a file, except with `format`: then it
probes the disks it is given again, refuses if anything about them changed since the plan, and only then
wipes (where the plan says so) and runs mkfs. Standard library and AnsibleModule only: it runs on the target.
"""

# Ansible modules put DOCUMENTATION and RETURN before the imports (ansible-doc reads them), hence E402.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
---
module: disk_probe
short_description: Resolve data disks by their cloud names and decide, read-only, what may be done to them
description:
  - Resolves each requested disk (a device path, a cloud name or a serial) to its kernel device.
  - Inspects it with C(blkid -p), C(wipefs --json), /sys/class/block, /proc/self/mountinfo, /proc/swaps and
    /etc/fstab, and decides: C(blank), C(filesystem), C(mounted) or C(refuse) with a one-line reason.
  - With I(auto), also takes every other disk that is provably blank and gives it a mount point.
  - Before calling a disk blank, reads it at spread-out places (see plan_scan() and the role's README).
  - Writes nothing, unless I(format) is given; supports check mode.
options:
  devices:
    description: The disks_devices entries (device, cloud_name or serial; mount and the other settings).
    type: list
    elements: dict
    default: []
  defaults:
    description: Settings for keys an entry leaves out (fstype, owner, group, mode, options, label, selinux_type).
    type: dict
    default: {}
  cloud:
    description: How cloud_name is resolved.
    type: str
    default: generic
    choices: [generic, gcp, oci, aliyun]
  auto:
    description: Also take every provably blank disk that no entry names.
    type: bool
    default: false
  auto_mount_prefix:
    description: Mount points for auto disks are this, then this followed by 1, 2, ...
    type: str
    default: /data
  auto_fstype:
    description: Filesystem created on auto disks.
    type: str
    default: ext4
  wipe:
    description: Names (serial, device path, by-id or by-path link, cloud name) of disks that may be wiped.
    type: list
    elements: str
    default: []
  device_timeout:
    description: Value of x-systemd.device-timeout= in the mount options.
    type: str
    default: 90s
  format:
    description:
      - Disks to format, as an earlier run of this module planned them (its C(disks) entries with C(format)).
      - Each is probed again first; if any is not the same disk with the same contents, nothing is written.
      - Then each is wiped (where the plan says C(wipe)) and gets its filesystem. The other options are ignored.
    type: list
    elements: dict
    default: []
author: provision
"""

RETURN = r"""
disks:
  description: One entry per requested disk, in order, then the auto disks. See the disks role's README.
  type: list
  elements: dict
  returned: always
ignored:
  description: Disks that auto mode left alone, with the reason.
  type: list
  elements: dict
  returned: always
msg:
  description: One line per disk saying what it resolved to and what will happen.
  type: str
  returned: always
"""

import errno
import fcntl
import json
import mmap
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ansible.module_utils.basic import AnsibleModule

# Filesystems the role mounts as they are; the ones it can create are in the role's argument specs.
MOUNTABLE = ("ext4", "ext3", "ext2", "xfs", "btrfs")
# Mount points whose disk is never touched.
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr")
# Kernel devices that are never data disks (auto mode does not even look at them).
NOT_DISKS = re.compile(r"^(loop|ram|zram|sr|fd|md|dm-|nbd|mtdblock)")
MIB = 1 << 20
GIB = 1 << 30
# The scan for data (plan_scan): it reads SCAN_BLOCK bytes at every multiple of the stride, which is
# SCAN_MIN_STRIDE or, on disks larger than SCAN_MIN_STRIDE * SCAN_MAX_STRIDED, the smallest power of two that
# keeps the strided reads at SCAN_MAX_STRIDED; plus the first and last SCAN_EDGE bytes whole.
SCAN_BLOCK = 4096
SCAN_EDGE = 4 * MIB
SCAN_MIN_STRIDE = 16 * MIB
SCAN_MAX_STRIDED = 2048
SCAN_THREADS = 8  # reads in flight: a cloud disk answers one read in 0.2-1 ms, and has IOPS to spare
# Where a filesystem may start on a disk whose partition table was wiped: the disk's start, and 1 MiB (where
# parted, fdisk, sgdisk and the cloud images put the first partition).
FS_STARTS = (0, MIB)
# Settings of a disks_devices entry that leaves them out (the role's argument specs document the same).
ENTRY_DEFAULTS = {
    "fstype": "ext4",
    "owner": "root",
    "group": "root",
    "mode": "0755",
    "options": "defaults",
    "label": "",
    "selinux_type": "",
    "netdev": None,
}
LINK_DIRS = ("/dev/disk/by-id", "/dev/disk/by-path", "/dev/oracleoci")
CLOUD_PATHS = {"gcp": "/dev/disk/by-id/google-{}", "oci": "/dev/oracleoci/{}"}
# Where a serial shows in by-id links: virtio-SERIAL, nvme-MODEL_SERIAL, scsi-0Google_PersistentDisk_NAME.
SERIAL_LINK = re.compile(r"^(?:virtio-|nvme-.*_|scsi-0Google_PersistentDisk_|google-)(?P<serial>.+)$")
SIGNATURE_NAMES = {
    "LVM2_member": "an LVM physical volume (LVM2_member)",
    "linux_raid_member": "a Linux RAID member (linux_raid_member)",
    "crypto_LUKS": "a LUKS encrypted volume (crypto_LUKS)",
    "swap": "a swap area (swap)",
    "zfs_member": "a ZFS pool member (zfs_member)",
    "ceph_bluestore": "a Ceph OSD (ceph_bluestore)",
    "iso9660": "an ISO 9660 image (iso9660)",
}


# ---- data ----------------------------------------------------------------------------------------------


@dataclass
class Device:
    """One kernel block device: what sysfs says, and (after inspect) what is on it."""

    name: str
    major_minor: str = ""
    size: int = 0
    serial: str = ""
    partition: bool = False
    parent: str = ""  # the disk of a partition
    ro: bool = False
    hidden: bool = False
    partitions: list[str] = field(default_factory=list)
    holders: list[str] = field(default_factory=list)  # of the device and of its partitions
    slaves: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    iscsi: bool = False
    # Filled by inspect():
    blkid: dict[str, str] = field(default_factory=dict)  # blkid -p -o export of the device itself
    ambivalent: bool = False  # blkid -p exit code 8: several signatures that exclude each other
    signatures: list[str] = field(default_factory=list)  # wipefs: "dos at 0x1fe"
    partition_types: dict[str, str] = field(default_factory=dict)  # vdb1 -> ext4 ("" = none found)
    busy: bool = False  # an O_EXCL open failed with EBUSY: the kernel or a program holds it
    data_at: int | None = None  # no signature, but the scan found a non-zero byte here (the lowest it read)
    scan: dict[str, float] = field(default_factory=dict)  # the scan's stride, reads, bytes and seconds

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


@dataclass(frozen=True)
class Mount:
    device: str  # kernel name of the mounted device ("" if not a block device)
    mount: str
    fstype: str
    source: str


@dataclass(frozen=True)
class FstabEntry:
    line: int
    source: str
    mount: str
    fstype: str
    options: str
    device: str = ""  # kernel name the source resolved to, for /dev/... sources that exist


@dataclass
class Host:
    devices: dict[str, Device]
    links: dict[str, str]  # /dev/disk/by-id/... -> kernel name
    mounts: list[Mount]
    swaps: list[str]  # kernel names in use as swap
    fstab: list[FstabEntry]
    paths: dict[str, str] = field(default_factory=dict)  # a requested device path -> kernel name ("" = none)
    dir_has_files: dict[str, bool] = field(default_factory=dict)  # mount point -> it is a non-empty directory


@dataclass(frozen=True)
class ScanPlan:
    """Where the scan for data reads a device: `reads` are (offset, length), sorted, 4 KiB aligned, apart."""

    stride: int
    reads: tuple[tuple[int, int], ...]


@dataclass
class Decision:
    verdict: str  # blank | filesystem | mounted | refuse
    reason: str = ""  # what was found, for refuse (and for a wipe)
    wipeable: bool = False  # disks_wipe may override the refusal
    fstype: str = ""  # of the filesystem found
    uuid: str = ""
    stale_mounts: list[str] = field(default_factory=list)  # fstab mount points of this filesystem elsewhere


# ---- parsing (pure) ------------------------------------------------------------------------------------


def parse_blkid_export(text: str) -> dict[str, str]:
    """`blkid -p -o export DEV`: KEY=value lines (values may be escaped with backslashes)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = re.sub(r"\\(.)", r"\1", value)
    values.pop("DEVNAME", None)
    return values


def parse_wipefs_json(text: str) -> list[str]:
    """`wipefs --json DEV`: every signature libblkid finds, at any offset, as "TYPE at OFFSET"."""
    if not text.strip():
        return []
    found = json.loads(text).get("signatures") or []
    return [f"{s.get('type') or '?'} at {s.get('offset') or '?'}" for s in found]


def _unescape_octal(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[tuple[str, str, str, str]]:
    """/proc/self/mountinfo as (major:minor, mount point, fstype, source) tuples."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append((fields[2], _unescape_octal(fields[4]), tail[0], _unescape_octal(tail[1])))
    return mounts


def parse_swaps(text: str) -> list[str]:
    """/proc/swaps: the file or device of each active swap area."""
    return [_unescape_octal(line.split()[0]) for line in text.splitlines()[1:] if line.strip()]


def parse_fstab(text: str) -> list[FstabEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3:
            options = fields[3] if len(fields) > 3 else "defaults"
            entries.append(
                FstabEntry(number, _unescape_octal(fields[0]), _unescape_octal(fields[1]), fields[2], options)
            )
    return entries


def parse_vpd_serial(page: bytes) -> str:
    """SCSI VPD page 0x80 (unit serial number): a 4-byte header, then the serial in ASCII."""
    if len(page) < 4 or page[1] != 0x80:
        return ""
    length = int.from_bytes(page[2:4], "big")
    return page[4 : 4 + length].decode("ascii", "replace").strip(" \0")


def natural_key(name: str) -> list[object]:
    """vdb < vdc < vdaa, nvme2n1 < nvme10n1."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]


# ---- planning the scan for data (pure) -------------------------------------------------------------------


def scan_stride(size: int) -> int:
    """The distance between the scan's strided reads on a device of `size` bytes: 16 MiB up to 32 GiB, then the
    smallest power of two that keeps them at 2048 (64 MiB at 100 GiB, 1 GiB at 2 TiB)."""
    stride = SCAN_MIN_STRIDE
    while -(-size // stride) > SCAN_MAX_STRIDED:
        stride *= 2
    return stride


def metadata_offsets(size: int) -> list[int]:
    """Places where filesystems keep copies of their metadata, for a filesystem that starts at 0 or at 1 MiB.

    ext4 (4 KiB blocks, 128 MiB block groups): the backup superblocks in groups 1 and the powers of 3, 5 and 7;
    btrfs: the superblock mirrors at 64 KiB, 64 MiB and 256 GiB; XFS: the headers of allocation groups 1 to 3,
    for an XFS that fills the device to its end (mkfs.xfs makes 4 groups below 4 TiB, groups of 1 TiB above).
    LVM and MD labels and GPT headers lie in the first and last 4 MiB, which the scan reads whole anyway.
    """
    offsets = []
    for start in FS_STARTS:
        room = size - start
        groups = room // (128 * MIB)
        sparse = [1]
        for base in (3, 5, 7):
            sparse += [base**power for power in range(1, groups.bit_length()) if base**power < groups]
        offsets += [start + group * 128 * MIB for group in sparse if group < groups]
        offsets += [start + mirror for mirror in (64 << 10, 64 * MIB, 256 * GIB)]
        blocks = room // 4096
        if blocks >= 128 * MIB // 4096:
            ag_blocks = -(-blocks // 4) if blocks < (4 << 40) // 4096 else ((1 << 40) - 1) // 4096
            offsets += [start + n * ag_blocks * 4096 for n in range(1, 4)]
    return sorted(offset for offset in set(offsets) if offset < size)


def plan_scan(size: int) -> ScanPlan:
    """The reads that decide whether a device of `size` bytes holds data: the first and last 4 MiB whole (in
    1 MiB reads), and 4 KiB at every multiple of scan_stride(size) and at each of metadata_offsets(size).

    What it finds for certain: any run of stride / 4 KiB consecutive 4 KiB blocks each holding a non-zero byte,
    in particular any `stride` bytes in a row none of which is zero, anywhere on the device (such a run holds a
    multiple of the stride); and anything non-zero in the first or last 4 MiB. The last read of a device whose
    size is not a multiple of 4 KiB reaches past its end and comes back short.
    """
    stride = scan_stride(size)
    tail = max(0, size - SCAN_EDGE) // SCAN_BLOCK * SCAN_BLOCK
    end = -(-size // SCAN_BLOCK) * SCAN_BLOCK
    dense = [(0, end)] if tail <= SCAN_EDGE else [(0, SCAN_EDGE), (tail, end)]
    reads = [(offset, min(MIB, stop - offset)) for start, stop in dense for offset in range(start, stop, MIB)]
    spots = set(range(0, size, stride)) | {offset // SCAN_BLOCK * SCAN_BLOCK for offset in metadata_offsets(size)}
    reads += [(spot, SCAN_BLOCK) for spot in spots if not any(start <= spot < stop for start, stop in dense)]
    return ScanPlan(stride, tuple(sorted(reads)))


def first_nonzero(data: bytes) -> int:
    """The index of the first byte that is not zero, or -1."""
    rest = len(data.lstrip(b"\0"))
    return len(data) - rest if rest else -1


def offset_text(offset: int) -> str:
    return f"{human_size(offset)} (byte {offset})"


# ---- deciding (pure) -----------------------------------------------------------------------------------


def resolve(kind: str, value: str, cloud: str, host: Host) -> tuple[str, str]:
    """(kernel name, "") for a requested disk, or ("", why it was not found)."""
    if kind == "cloud_name":
        if cloud == "aliyun":
            return resolve("serial", value, cloud, host)
        if cloud not in CLOUD_PATHS:
            return "", "cloud_name needs disks_cloud set to gcp, oci or aliyun"
        path = CLOUD_PATHS[cloud].format(value)
        name = host.links.get(path, "")
        if name:
            return name, ""
        hint = " (are the google-guest-configs udev rules installed?)" if cloud == "gcp" else ""
        return "", f"{path} does not exist{hint}"
    if kind == "serial":
        matches = serial_matches(value, host)
        if len(matches) == 1:
            return matches[0], ""
        if matches:
            return "", f"serial {value} matches several disks: {', '.join(matches)} (multipath is not supported)"
        return "", "no disk has this serial"
    name = host.links.get(value) or host.paths.get(value, "")
    if name in host.devices:
        return name, ""
    return "", f"{value} does not exist"


def serial_matches(serial: str, host: Host) -> list[str]:
    """Whole disks whose serial (sysfs or a by-id link) is `serial`; Aliyun's d- prefix is optional."""
    wanted = {serial, serial.removeprefix("d-")}
    found = set()
    for dev in host.devices.values():
        if dev.partition:
            continue
        serials = {dev.serial, dev.serial.removeprefix("d-")} - {""}
        for link in dev.links:
            match = SERIAL_LINK.match(os.path.basename(link))
            if link.startswith("/dev/disk/by-id/") and match:
                serials.add(match["serial"])
        if serials & wanted:
            found.add(dev.name)
    return sorted(found, key=natural_key)


def base_disks(name: str, host: Host, seen: frozenset[str] = frozenset()) -> set[str]:
    """The disks under a device: a partition's disk, a dm/md device's slaves' disks, or the disk itself."""
    dev = host.devices.get(name)
    if dev is None or name in seen:
        return set()
    if dev.partition:
        return base_disks(dev.parent, host, seen | {name})
    if dev.slaves:
        return set().union(*(base_disks(slave, host, seen | {name}) for slave in dev.slaves))
    return {name}


def system_disks(host: Host) -> dict[str, list[str]]:
    """Disk name -> the system mount points (/, /boot, ...) whose filesystem lives on it."""
    found: dict[str, list[str]] = {}
    for mount in host.mounts:
        if mount.mount in SYSTEM_MOUNTS and mount.device:
            for disk in base_disks(mount.device, host):
                found.setdefault(disk, []).append(mount.mount)
    return found


def own_names(dev: Device) -> set[str]:
    """The device itself and its partitions."""
    return {dev.name, *dev.partitions}


def fstab_mounts(dev: Device, host: Host) -> list[str]:
    """Mount points of fstab lines that name this device's filesystem (by UUID, LABEL or a /dev path)."""
    uuid, label = dev.blkid.get("UUID", ""), dev.blkid.get("LABEL", "")
    found = []
    for entry in host.fstab:
        source = entry.source.replace('"', "")
        if (
            entry.device == dev.name
            or (uuid and source == f"UUID={uuid}")
            or (uuid and source == f"/dev/disk/by-uuid/{uuid}")
            or (label and source == f"LABEL={label}")
        ):
            found.append(entry.mount)
    return found


def filesystem_of(dev: Device) -> str:
    """The one mountable filesystem directly on the device, or "" (also when anything else is there)."""
    fstype = dev.blkid.get("TYPE", "")
    if fstype not in MOUNTABLE or dev.blkid.get("PTTYPE") or dev.ambivalent or dev.partitions:
        return ""
    if any(not signature.startswith(f"{fstype} at ") for signature in dev.signatures):
        return ""
    return fstype


def describe_contents(dev: Device) -> str:
    """What is on a device that is neither blank nor a filesystem we mount, as a short phrase."""
    if dev.partitions:
        parts = ", ".join(f"{p} ({dev.partition_types.get(p) or 'no filesystem'})" for p in dev.partitions)
        pttype = dev.blkid.get("PTTYPE", "")
        return f"{pttype + ' ' if pttype else ''}partition table with partitions {parts}"
    if dev.ambivalent:
        return f"several conflicting signatures ({', '.join(dev.signatures) or 'blkid -p is ambivalent'})"
    pttype, fstype = dev.blkid.get("PTTYPE", ""), dev.blkid.get("TYPE", "")
    if pttype and fstype:
        return f"a {fstype} signature and a {pttype} partition table"
    if pttype:
        return f"{pttype} partition table"
    if fstype in SIGNATURE_NAMES:
        return SIGNATURE_NAMES[fstype]
    if fstype in MOUNTABLE:
        return f"a {fstype} filesystem next to other signatures ({', '.join(dev.signatures)})"
    if fstype:
        return f"a {fstype} signature ({dev.blkid.get('USAGE') or 'unknown use'})"
    if dev.signatures:
        return f"signatures {', '.join(dev.signatures)}"
    return f"non-zero data at offset {offset_text(dev.data_at or 0)}"


def decide(dev: Device, host: Host, mount: str | None, system: list[str]) -> Decision:
    """Whether the disk is blank, holds a filesystem to mount as it is, is mounted already, or must be left alone.

    `mount` is the requested mount point (None while auto mode looks at a disk); `system` lists the system
    mount points (/, /boot) that live on this disk. Refusals that disks_wipe can override are `wipeable`;
    a disk that is in use (system, swap, holders, mounted elsewhere, busy) never is.
    """

    def refuse(reason: str, wipeable: bool = False) -> Decision:
        return Decision("refuse", reason, wipeable=wipeable)

    if system:
        return refuse(f"holds the {' and '.join(system)} filesystem of this host")
    names = own_names(dev)
    if any(name in host.swaps for name in names):
        return refuse("is in use as swap")
    if dev.holders:
        return refuse(f"is in use by {', '.join(dev.holders)} (LVM, device-mapper or RAID); release it first")
    mounted = [m for m in host.mounts if m.device in names]
    on_partitions = [m for m in mounted if m.device != dev.name]
    if on_partitions:
        return refuse(f"its partition {on_partitions[0].device} is mounted at {on_partitions[0].mount}")
    if mount is not None:
        taken = [m for m in host.mounts if m.mount == mount and m.device != dev.name]
        if taken:
            return refuse(f"{mount} already has {taken[-1].source} mounted; unmount it or choose another mount")
    fstype = filesystem_of(dev)
    here = fstab_mounts(dev, host) if fstype else []
    elsewhere = sorted({m.mount for m in mounted if m.mount != mount})
    unexplained = [path for path in elsewhere if path not in here]
    if unexplained:
        return refuse(f"is mounted at {', '.join(unexplained)}, not from /etc/fstab; unmount it first")
    if dev.busy and not mounted:
        return refuse("is busy: the kernel or a program holds it open exclusively")
    if fstype:
        verdict = "mounted" if mount is not None and any(m.mount == mount for m in mounted) else "filesystem"
        stale = sorted({path for path in here if path != mount})
        return Decision(verdict, fstype=fstype, uuid=dev.blkid.get("UUID", ""), stale_mounts=stale)
    if dev.partitions or dev.blkid or dev.ambivalent or dev.signatures or dev.data_at is not None:
        return refuse(describe_contents(dev), wipeable=True)
    if dev.ro:
        return refuse("is read-only")
    return Decision("blank")


def wipe_names(dev: Device, requested: str) -> set[str]:
    """Every name of a disk that disks_wipe may use."""
    names = {dev.path, *dev.links, requested}
    if dev.serial:
        names |= {dev.serial, f"d-{dev.serial}"}
    return names - {""}


def is_kernel_name(name: str) -> bool:
    """/dev/vdb, /dev/sdb, /dev/nvme1n1: names the kernel gives in the order it finds disks, which can change."""
    return re.match(r"^/dev/[^/]+$", name) is not None


def wipe_suggestion(dev: Device, requested: str) -> str:
    """The most stable name of a disk for a disks_wipe hint: serial, a by-id link, the request, another link."""
    if dev.serial:
        return dev.serial
    by_id = sorted(link for link in dev.links if link.startswith("/dev/disk/by-id/"))
    if by_id:
        return by_id[0]
    if requested and not is_kernel_name(requested):
        return requested
    return min(dev.links, default="")


def wipe_problems(wipe: list[str], host: Host, requested: list[tuple[str, str]]) -> list[str]:
    """One line for each disks_wipe name that could wipe the wrong disk: a kernel name, or a name of several disks.

    `requested` pairs the kernel name of each disks_devices entry's disk with what the entry asks for (a cloud
    name counts as a name of its disk, as wipe_names() says).
    """
    names = {
        dev.name: wipe_names(dev, "") | {value for name, value in requested if name == dev.name}
        for dev in host.devices.values()
        if not dev.partition
    }
    problems = []
    for wanted in wipe:
        matches = sorted((name for name, known in names.items() if wanted in known), key=natural_key)
        if is_kernel_name(wanted):
            stable = wipe_suggestion(host.devices[matches[0]], "") if len(matches) == 1 else ""
            problems.append(
                f'disks_wipe: "{wanted}" is a kernel name, which can be another disk after a reboot; name the disk '
                f"by its serial or a /dev/disk/by-id link{f' (here: {stable})' if stable else ''}"
            )
        elif len(matches) > 1:
            disks = ", ".join(f"/dev/{name}" for name in matches)
            problems.append(
                f'disks_wipe: "{wanted}" names {len(matches)} disks ({disks}); name one of them by its '
                "/dev/disk/by-id or by-path link"
            )
    return problems


def assign_auto_mounts(prefix: str, taken: set[str], existing: dict[str, str], new: list[str]) -> dict[str, str]:
    """Mount points for auto disks: existing ones keep theirs; new ones get prefix, prefix1, prefix2, ...

    `taken` holds mount points in use otherwise (configured, mounted or in fstab); new disks are taken in
    natural name order, so the first run gives vdb /data and vdc /data1.
    """
    used = set(taken) | set(existing.values())
    assigned = dict(existing)
    index = 0
    for name in sorted(new, key=natural_key):
        while True:
            candidate = prefix if index == 0 else f"{prefix}{index}"
            index += 1
            if candidate not in used:
                break
        assigned[name] = candidate
        used.add(candidate)
    return assigned


def mount_options(options: str, timeout: str, netdev: bool) -> str:
    """The user's options plus nofail, the device timeout and (for network disks) _netdev, each once."""
    wanted = [o for o in options.split(",") if o] or ["defaults"]
    wanted += ["nofail", f"x-systemd.device-timeout={timeout}"] + (["_netdev"] if netdev else [])
    return ",".join(dict.fromkeys(wanted))


def human_size(size: int) -> str:
    if size < 1 << 30:
        return f"{size / MIB:.1f} MiB"
    return f"{size / (1 << 30):.1f} GiB"


# ---- the plan for one entry (pure) ---------------------------------------------------------------------


def requested_label(entry: dict, cloud: str) -> tuple[str, str, str]:
    """(kind, value, label) of an entry: ("cloud_name", "models", "gcp:models") and so on."""
    for kind in ("device", "cloud_name", "serial"):
        value = str(entry.get(kind) or "")
        if value:
            label = {"device": value, "cloud_name": f"{cloud}:{value}", "serial": f"serial:{value}"}[kind]
            return kind, value, label
    return "", "", "(no device, cloud_name or serial)"


def plan(
    config: dict,
    dev: Device | None,
    host: Host,
    decision: Decision,
    requested: str,
    label: str,
    wipe: set[str],
    device_timeout: str,
    source: str,
) -> dict:
    """The result entry for one disk: what it is, what was found, and what the role will do."""
    mount = config["mount"]
    wiping = (
        decision.verdict == "refuse"
        and decision.wipeable
        and dev is not None
        and bool(wipe & wipe_names(dev, requested))
    )
    fstype = config["fstype"] if wiping or not decision.fstype else decision.fstype
    netdev = bool(dev and dev.iscsi) if config.get("netdev") is None else bool(config["netdev"])
    result = {
        "source": source,
        "requested": label,
        "mount": mount,
        "device": dev.path if dev else "",
        "name": dev.name if dev else "",
        "links": dev.links if dev else [],
        "serial": dev.serial if dev else "",
        "size": dev.size if dev else 0,
        "iscsi": dev.iscsi if dev else False,
        "found": _found(dev, host) if dev else {},
        "verdict": decision.verdict,
        "reason": decision.reason,
        "wipeable": decision.wipeable,
        "wipe": wiping,
        "format": wiping or decision.verdict == "blank",
        "fstype": fstype,
        "uuid": "" if wiping else decision.uuid,
        "stale_mounts": decision.stale_mounts,
        "fstab_duplicates": sum(1 for e in host.fstab if e.mount == mount) > 1,
        "netdev": netdev,
        "mount_options": mount_options(str(config["options"]), device_timeout, netdev),
        "passno": 2 if fstype.startswith("ext") else 0,
        "owner": config["owner"],
        "group": config["group"],
        "mode": config["mode"],
        "label": config.get("label") or "",
        "selinux_type": config.get("selinux_type") or "",
        "error": "",
    }
    result["summary"] = _summary(result, dev, host, decision, label, str(config["fstype"]))
    if decision.verdict == "refuse" and not wiping:
        result["error"] = refusal(dev, decision, requested, label)
    return result


def refusal(dev: Device | None, decision: Decision, requested: str, label: str) -> str:
    """The one line a refused disk stops its host with: the device, what was found, and what would allow it."""
    if dev is None:
        return f"disks: {label} {decision.reason}"
    if dev.serial and (label == dev.path or label.startswith("serial:")):
        who = f"{dev.path} (serial {dev.serial})"
    else:
        who = dev.path if label in (dev.path, "auto") else f"{dev.path} ({label})"
    if not decision.wipeable:
        return f"disks: {who} {decision.reason}"
    stable = wipe_suggestion(dev, requested)
    fix = f'to wipe it set disks_wipe: ["{stable}"]' if stable else "it has no stable name for disks_wipe"
    mountable = [p for p in dev.partitions if dev.partition_types.get(p) in MOUNTABLE]
    if mountable:  # after the disks_wipe hint: a long line is cut at its end
        fix += f" (or device: /dev/{mountable[0]} mounts that partition as it is)"
    return f"disks: {who} is not blank: {decision.reason}; {fix}"


def changed_since(planned: dict, dev: Device | None, decision: Decision | None) -> str:
    """Why a disk that a plan formats must not be formatted now ("" when it may): it must be the same disk
    (serial and size) and the probe must find on it what it found when the plan was made."""
    who = f"{planned['device']}{' (serial ' + planned['serial'] + ')' if planned['serial'] else ''}"
    if dev is None or decision is None or (dev.serial, dev.size) != (planned["serial"], planned["size"]):
        now = f"{human_size(dev.size)}, serial {dev.serial or 'none'}" if dev else "gone"
        return f"disks: {who} is no longer the disk that was probed (now: {now})"
    then = (planned["verdict"], planned["reason"], planned["wipeable"])
    if (decision.verdict, decision.reason, decision.wipeable) != then:
        was = planned["reason"] or planned["verdict"]
        return f"disks: {who} changed since it was probed (was: {was}; now: {decision.reason or decision.verdict})"
    return ""


def _summary(result: dict, dev: Device | None, host: Host, decision: Decision, label: str, wanted_fstype: str) -> str:
    """One line: the request, the device it resolved to, what was found and what happens."""
    mount, fstype = result["mount"], result["fstype"]
    if dev is None:
        return f"{label} -> nothing: refused: {decision.reason}"
    head = f"{label} -> {dev.path} ({human_size(dev.size)}{', serial ' + dev.serial if dev.serial else ''})"
    if decision.verdict == "refuse" and not result["wipe"]:
        return f"{head}: refused: {'not blank: ' if decision.wipeable else ''}{decision.reason}"
    if result["wipe"]:
        action = f"not blank ({decision.reason}) and named in disks_wipe: wipe it, create {fstype}, mount at {mount}"
    elif decision.verdict == "blank":
        action = f"blank: create {fstype}, mount at {mount}"
    elif decision.verdict == "mounted":
        action = f"{fstype} UUID={decision.uuid} mounted at {mount}"
    else:
        action = f"{fstype} UUID={decision.uuid}: mount it as it is at {mount}"
    notes = []
    if decision.fstype and decision.fstype != wanted_fstype:
        notes.append(f"holds {decision.fstype}, not {wanted_fstype}: a filesystem is never reformatted")
    if decision.stale_mounts:
        notes.append(f"moves from {', '.join(decision.stale_mounts)}")
    if decision.verdict != "mounted" and host.dir_has_files.get(mount):
        notes.append(f"{mount} has files that the mount will hide")
    return f"{head}: {action}" + "".join(f"; {note}" for note in notes)


def _found(dev: Device, host: Host) -> dict:
    """What the probe saw on a device, for the result (debugging and tests)."""
    return {
        "blkid": dev.blkid,
        "ambivalent": dev.ambivalent,
        "signatures": dev.signatures,
        "partitions": dev.partition_types,
        "holders": dev.holders,
        "mounts": [m.mount for m in host.mounts if m.device in own_names(dev)],
        "swap": any(name in host.swaps for name in own_names(dev)),
        "busy": dev.busy,
        "data_at": dev.data_at,
        "scan": dev.scan,
        "ro": dev.ro,
        "fstab": fstab_mounts(dev, host),
    }


Inspect = Callable[[Device], None]


def probe(params: dict, host: Host, inspect_device: Inspect) -> dict:
    """The module's result for `params`, given the host's data and a function that inspects one device."""
    cloud, wipe = params["cloud"], set(params["wipe"])
    defaults = {**ENTRY_DEFAULTS, **params["defaults"]}
    systems = system_disks(host)
    results: list[dict] = []
    claimed: dict[str, str] = {}  # kernel name -> label of the entry that named it

    targets = []  # (entry, what it asks for, its label, the kernel name it resolves to, why none)
    for entry in params["devices"]:
        kind, value, label = requested_label(entry, cloud)
        targets.append((entry, value, label, *(resolve(kind, value, cloud, host) if kind else ("", "names no disk"))))
    problems = wipe_problems(params["wipe"], host, [(name, value) for _, value, _, name, _ in targets if name])
    if problems:
        return {"changed": False, "failed": True, "msg": "; ".join(problems), "disks": [], "ignored": []}

    for entry, value, label, name, why in targets:
        config = {**defaults, **{k: v for k, v in entry.items() if v is not None}}
        dev = host.devices.get(name) if name else None
        if dev is None:
            decision = Decision("refuse", f"matches no disk: {why}; {disks_here(host)}")
        elif name in claimed:
            decision = Decision("refuse", f"is the same disk as {claimed[name]}; name each disk once")
        else:
            claimed[name] = label
            inspect_device(dev)
            decision = decide(dev, host, config["mount"], systems.get(dev.parent or dev.name, []))
        results.append(plan(config, dev, host, decision, value, label, wipe, params["device_timeout"], "devices"))

    ignored: list[dict] = []
    if params["auto"]:
        results += auto_plans(params, defaults, host, set(claimed), results, inspect_device, ignored)
    lines = [r["summary"] for r in results] + [f"auto: left {i['device']} alone: {i['reason']}" for i in ignored]
    return {"changed": False, "disks": results, "ignored": ignored, "msg": "\n".join(lines) or "no data disks"}


def disks_here(host: Host) -> str:
    """A short list of the host's disks, for a "matches no disk" message."""
    disks = [
        f"{d.name}{' serial ' + d.serial if d.serial else ''}"
        for d in sorted(host.devices.values(), key=lambda d: natural_key(d.name))
        if not d.partition and not d.hidden and d.size and not NOT_DISKS.match(d.name)
    ]
    more = f" and {len(disks) - 4} more" if len(disks) > 4 else ""
    return f"disks here: {', '.join(disks[:4]) or 'none'}{more}"


def auto_plans(
    params: dict,
    defaults: dict,
    host: Host,
    claimed: set[str],
    results: list[dict],
    inspect_device: Inspect,
    ignored: list[dict],
) -> list[dict]:
    """Plans for the disks auto mode takes: the blank ones, and the ones it mounted at prefix* before."""
    prefix = params["auto_mount_prefix"].rstrip("/") or "/data"
    pattern = re.compile(rf"^{re.escape(prefix)}\d*$")
    systems = system_disks(host)
    existing: dict[str, str] = {}
    new: list[str] = []
    looked: dict[str, Device] = {}
    for dev in sorted(host.devices.values(), key=lambda d: natural_key(d.name)):
        if dev.partition or dev.hidden or dev.size == 0 or NOT_DISKS.match(dev.name) or dev.name in claimed:
            continue
        inspect_device(dev)
        looked[dev.name] = dev
        decision = decide(dev, host, None, systems.get(dev.name, []))
        ours = [path for path in fstab_mounts(dev, host) if pattern.match(path)] if decision.fstype else []
        if decision.verdict == "blank":
            new.append(dev.name)
        elif ours:
            existing[dev.name] = ours[0]
        else:
            reason = decision.reason or f"holds {decision.fstype}, which /etc/fstab does not mount at {prefix}*"
            ignored.append({"device": dev.path, "reason": reason})
    taken = {r["mount"] for r in results} | {m.mount for m in host.mounts} | {e.mount for e in host.fstab}
    assigned = assign_auto_mounts(prefix, taken - set(existing.values()), existing, new)
    plans = []
    for name in sorted(assigned, key=natural_key):
        config = {**defaults, "fstype": params["auto_fstype"], "mount": assigned[name]}
        decision = decide(looked[name], host, assigned[name], systems.get(name, []))
        plans.append(plan(config, looked[name], host, decision, "", "auto", set(), params["device_timeout"], "auto"))
    return plans


# ---- reading the host ----------------------------------------------------------------------------------


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return default


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path), key=natural_key)
    except OSError:
        return []


def gather_host(requested_paths: list[str], mount_points: list[str], sys_block: str = "/sys/class/block") -> Host:
    """Read sysfs, the udev links, /proc and /etc/fstab. Reads only."""
    devices: dict[str, Device] = {}
    for name in _listdir(sys_block):
        base = os.path.join(sys_block, name)
        real = os.path.realpath(base)
        partition = os.path.exists(os.path.join(base, "partition"))
        serial = _read(f"{base}/serial") or _read(f"{base}/device/serial")
        if not serial:
            try:
                with open(f"{base}/device/vpd_pg80", "rb") as handle:
                    serial = parse_vpd_serial(handle.read())
            except OSError:
                serial = ""
        devices[name] = Device(
            name=name,
            major_minor=_read(f"{base}/dev"),
            size=int(_read(f"{base}/size", "0") or 0) * 512,
            serial=serial,
            partition=partition,
            parent=os.path.basename(os.path.dirname(real)) if partition else "",
            ro=_read(f"{base}/ro") == "1",
            hidden=_read(f"{base}/hidden") == "1",
            holders=_listdir(f"{base}/holders"),
            slaves=_listdir(f"{base}/slaves"),
            iscsi="/session" in real,
        )
    for dev in list(devices.values()):
        if dev.partition and dev.parent in devices:
            parent = devices[dev.parent]
            parent.partitions.append(dev.name)
            parent.holders += dev.holders
    by_majmin = {dev.major_minor: dev.name for dev in devices.values()}

    def kernel_name(path: str) -> str:
        name = os.path.basename(os.path.realpath(path)) if path.startswith("/dev/") else ""
        return name if name in devices else ""

    links: dict[str, str] = {}
    for directory in LINK_DIRS:
        for entry in _listdir(directory):
            path = os.path.join(directory, entry)
            name = kernel_name(path)
            if name:
                links[path] = name
                devices[name].links.append(path)
                devices[name].iscsi |= "-iscsi-" in entry
    mounts = []
    for majmin, mount, fstype, source in parse_mountinfo(_read("/proc/self/mountinfo")):
        # btrfs and others report an anonymous 0:N device; their source names the real one.
        device = by_majmin.get(majmin, "") if not majmin.startswith("0:") else kernel_name(source)
        mounts.append(Mount(device, mount, fstype, source))
    swaps = [kernel_name(path) for path in parse_swaps(_read("/proc/swaps"))]
    fstab = [
        FstabEntry(e.line, e.source, e.mount, e.fstype, e.options, kernel_name(e.source))
        for e in parse_fstab(_read("/etc/fstab"))
    ]
    paths = {path: kernel_name(path) for path in requested_paths}
    has_files = {}
    for point in mount_points:
        has_files[point] = bool(os.path.isdir(point) and _listdir(point))
    return Host(devices, links, mounts, [s for s in swaps if s], fstab, paths, has_files)


def inspect(module: AnsibleModule, dev: Device) -> None:
    """Fill in what is on the device: blkid -p, wipefs, partitions, busy, and the scan for data. Reads only."""
    rc, out, err = module.run_command(["blkid", "-p", "-o", "export", dev.path])
    if rc == 8:
        dev.ambivalent = True
    elif rc not in (0, 2):
        module.fail_json(msg=f"blkid -p {dev.path} failed (rc={rc}): {err.strip()}")
    dev.blkid = parse_blkid_export(out) if rc == 0 else {}
    rc, out, err = module.run_command(["wipefs", "--json", dev.path])
    if rc != 0:
        module.fail_json(msg=f"wipefs --json {dev.path} failed (rc={rc}): {err.strip()}")
    dev.signatures = parse_wipefs_json(out)
    for part in dev.partitions:
        rc, out, _ = module.run_command(["blkid", "-p", "-o", "export", f"/dev/{part}"])
        dev.partition_types[part] = parse_blkid_export(out).get("TYPE", "") if rc == 0 else ""
    try:
        fd = os.open(dev.path, os.O_RDONLY | os.O_EXCL)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            module.fail_json(msg=f"cannot open {dev.path}: {exc}")
        dev.busy = True
    else:
        try:
            if not (dev.blkid or dev.signatures or dev.partitions or dev.ambivalent):
                plan = plan_scan(dev.size)
                started = time.monotonic()
                dev.data_at, read = scan_for_data(fd, plan)
                dev.scan = {
                    "stride": plan.stride,
                    "reads": len(plan.reads),
                    "bytes": read,
                    "seconds": round(time.monotonic() - started, 4),
                }
        except OSError as exc:
            module.fail_json(msg=f"reading {dev.path}: {exc}")
        finally:
            os.close(fd)


def scan_for_data(fd: int, plan: ScanPlan) -> tuple[int | None, int]:
    """(offset of the lowest non-zero byte the plan's reads find or None, bytes read). Reads only.

    Direct I/O where the device allows it (no read-ahead: a 4 KiB read costs 4 KiB), else read-ahead off.
    SCAN_THREADS threads each take a contiguous share of the reads, in order, and stop at reads above the
    lowest offset found so far: the answer is the lowest over all reads, whichever thread gets there first.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    except OSError:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    lowest: list[int] = []
    total = [0]
    lock = threading.Lock()

    def work(share: tuple[tuple[int, int], ...]) -> None:
        buffer = mmap.mmap(-1, max(length for _, length in share))  # page-aligned, as O_DIRECT needs
        read = 0
        try:
            with memoryview(buffer) as view:
                for offset, length in share:
                    if lowest and offset > lowest[0]:
                        break
                    count = os.preadv(fd, [view[:length]], offset)
                    read += count
                    at = first_nonzero(buffer[:count])
                    if at >= 0:
                        with lock:
                            lowest[:] = [min([offset + at, *lowest])]
                        break
        finally:
            buffer.close()
            with lock:
                total[0] += read

    size = -(-len(plan.reads) // SCAN_THREADS)
    shares = [plan.reads[i : i + size] for i in range(0, len(plan.reads), size)]
    with ThreadPoolExecutor(max_workers=len(shares) or 1) as pool:
        for future in [pool.submit(work, share) for share in shares]:
            future.result()
    return (lowest[0] if lowest else None), total[0]


def reprobe(module: AnsibleModule, planned: dict) -> str:
    """Probe a disk that a plan formats once more, as the plan was made: why it must not be formatted, or ""."""
    host = gather_host([], [])
    dev = host.devices.get(planned["name"])
    if dev is None:
        return changed_since(planned, None, None)
    inspect(module, dev)
    system = system_disks(host).get(dev.parent or dev.name, [])
    return changed_since(planned, dev, decide(dev, host, planned["mount"], system))


def format_disks(module: AnsibleModule, planned: list[dict]) -> None:
    """Wipe (where planned) and make the filesystem on each planned disk, after probing each once more.

    All are probed first, so a changed disk stops the host before anything is written; each disk after the
    first is probed again right before its own mkfs, since the mkfs before it took a while. mkfs runs without
    its force flag, answering "n" to any question: it refuses a device that holds a signature, as we do.
    """
    problems = [why for why in (reprobe(module, disk) for disk in planned) if why]
    if problems:
        module.fail_json(msg="; ".join(problems) + "; nothing was written")
    done: list[str] = []
    for disk in planned:
        if module.check_mode:
            done.append(disk["device"])
            continue
        why = reprobe(module, disk) if done else ""
        if why:
            module.fail_json(msg=f"{why}; not formatting it (formatted before it: {', '.join(done)})", changed=True)
        if disk["wipe"]:
            partitions = [f"/dev/{name}" for name in disk["found"].get("partitions", {})]
            module.run_command(["wipefs", "--all", *partitions, disk["device"]], check_rc=True)
        label = ["-L", disk["label"]] if disk["label"] else []
        module.run_command([f"mkfs.{disk['fstype']}", "-q", *label, disk["device"]], data="n", check_rc=True)
        done.append(disk["device"])
    module.exit_json(changed=bool(done), formatted=done, msg=f"created filesystems on {', '.join(done)}")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "devices": {"type": "list", "elements": "dict", "default": []},
            "defaults": {"type": "dict", "default": {}},
            "cloud": {"type": "str", "default": "generic", "choices": ["generic", "gcp", "oci", "aliyun"]},
            "auto": {"type": "bool", "default": False},
            "auto_mount_prefix": {"type": "str", "default": "/data"},
            "auto_fstype": {"type": "str", "default": "ext4"},
            "wipe": {"type": "list", "elements": "str", "default": []},
            "device_timeout": {"type": "str", "default": "90s"},
            "format": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["format"]:
        format_disks(module, params["format"])
    requested = [str(entry.get("device")) for entry in params["devices"] if entry.get("device")]
    mount_points = [str(entry.get("mount")) for entry in params["devices"] if entry.get("mount")]
    host = gather_host(requested, mount_points)
    inspected: set[str] = set()

    def inspect_once(dev: Device) -> None:
        if dev.name not in inspected:
            inspected.add(dev.name)
            inspect(module, dev)

    result = probe(params, host, inspect_once)
    if result.get("failed"):
        module.fail_json(msg=result["msg"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
