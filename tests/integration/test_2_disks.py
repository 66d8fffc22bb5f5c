"""The disks role on real lab VMs with real virtio disks (/dev/vdb, serial labN-data, as on Aliyun).

Runs after test_1_lab_up.py on the same two VMs.  Each test puts /dev/vdb into the state it needs
(blank, ext4 with a file, a partition table, an LVM PV, a LUKS signature) through SSH, then runs
`provision up --tags disks` with the disks configured in the inventory's group_vars, as a user would.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from labtools import ROOT, Lab, recap

MOUNT = "/srv/models"


def disks_inventory(lab: Lab, tmp_path: Path, **extra: object) -> Path:
    """A copy of the lab inventory whose group_vars configure the data disk, as a user would write it."""
    inventory = tmp_path / "inventory"
    shutil.copytree(lab.inventory, inventory, dirs_exist_ok=True)
    config = {
        "disks_cloud": "aliyun",
        # Aliyun names a data disk by its serial; the lab gives each VM's /dev/vdb the serial labN-data.
        "disks_devices": [{"cloud_name": "{{ inventory_hostname }}-data", "mount": MOUNT, "owner": "debian"}],
        **extra,
    }
    (inventory / "group_vars" / "lab.yml").write_text(yaml.safe_dump(config))
    return inventory


def up_disks(lab: Lab, inventory: Path, limit: str, *more: str) -> subprocess.CompletedProcess[str]:
    return lab.provision("up", "-i", str(inventory), "--tags", "disks", "--limit", limit, *more)


def reset_disk(lab: Lab, host: str) -> None:
    """Back to a blank data disk: unmounted, out of fstab, zeros everywhere (the lab's data disk discards:
    a discarded qcow2 cluster reads zeros, as a new cloud disk does; the role's scan looks all over the disk)."""
    lab.sh(
        host,
        # daemon-reload (seconds under TCG) only when fstab had the mount: its generated unit must go
        f"sudo umount -q {MOUNT} 2>/dev/null; if grep -q ' {MOUNT} ' /etc/fstab; then"
        f" sudo sed -i '\\# {MOUNT} #d' /etc/fstab; sudo systemctl daemon-reload; fi;"
        " sudo wipefs -aq /dev/vdb; sudo blkdiscard -f /dev/vdb;"
        " sudo blockdev --rereadpt /dev/vdb 2>/dev/null; true",
    )
    assert probe(lab, host) == "", "the data disk did not come back blank"


def probe(lab: Lab, host: str) -> str:
    """What blkid's low-level probe reports on the whole disk ("" when nothing)."""
    return lab.ssh(host, "sudo blkid -p -o export /dev/vdb").stdout.strip()


def first_mib(lab: Lab, host: str) -> str:
    return lab.sh(host, "sudo dd if=/dev/vdb bs=1M count=1 status=none | sha256sum").split()[0]


def sha256_of(lab: Lab, host: str, *regions: tuple[int, int]) -> str:
    """The sha256 of these (offset, length) regions of /dev/vdb (MiB-aligned), read past the page cache."""
    reads = "; ".join(
        f"sudo dd if=/dev/vdb iflag=direct,skip_bytes,count_bytes skip={offset} count={length} bs=1M status=none"
        for offset, length in regions
    )
    return lab.sh(host, f"({reads}) | sha256sum").split()[0]


def python_as_root(lab: Lab, host: str, code: str) -> None:
    encoded = base64.b64encode(code.encode()).decode()
    lab.sh(host, f"echo {encoded} | base64 -d | sudo python3 -")


def mounted_uuid(lab: Lab, host: str) -> str:
    return lab.sh(host, f"findmnt -n -o UUID --mountpoint {MOUNT}").strip()


def fstab_lines(lab: Lab, host: str) -> list[str]:
    return [line for line in lab.sh(host, "cat /etc/fstab").splitlines() if f" {MOUNT} " in line]


DOS_PARTITION_TABLE = """
import os, struct
fd = os.open("/dev/vdb", os.O_WRONLY)
entry = bytes([0, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 204800)
os.pwrite(fd, entry, 446)
os.pwrite(fd, b"\\x55\\xaa", 510)
os.fsync(fd)
"""

# An LVM2 physical volume label as pvcreate writes it (sector 1: LABELONE, sector number, CRC, offset,
# "LVM2 001", PV UUID), which blkid -p reports as LVM2_member.  Writing it directly instead of installing
# lvm2 in the VM saves ~7 minutes of initramfs rebuilding under TCG; a real pvcreate'd PV was checked by hand.
LVM_PV_LABEL = """
import os, struct, zlib
sector = bytearray(512)
body = struct.pack("<I", 32) + b"LVM2 001" + b"AbCdEfGhIjKlMnOpQrStUvWxYz012345"
sector[20 : 20 + len(body)] = body
sector[0:8] = b"LABELONE"
sector[8:16] = struct.pack("<Q", 1)
crc = zlib.crc32(bytes(sector[20:512]), 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
sector[16:20] = struct.pack("<I", crc)
fd = os.open("/dev/vdb", os.O_WRONLY)
os.pwrite(fd, bytes(sector), 512)
os.fsync(fd)
"""

LUKS_SIGNATURE = """
import os
fd = os.open("/dev/vdb", os.O_WRONLY)
os.pwrite(fd, os.urandom(1 << 20), 0)
header = b"LUKS\\xba\\xbe" + (1).to_bytes(2, "big")
os.pwrite(fd, header, 0)
os.pwrite(fd, b"0b9d5a5e-2f0c-4b55-9a3e-6a1f3c1b2d4e".ljust(40, b"\\0"), 168)
os.fsync(fd)
"""


@pytest.fixture()
def blank(lab: Lab) -> Lab:
    for host in ("lab1", "lab2"):
        reset_disk(lab, host)
    return lab


def test_check_mode_on_a_blank_disk_reports_and_changes_nothing(blank: Lab, tmp_path: Path) -> None:
    proc = up_disks(blank, disks_inventory(blank, tmp_path), "lab1", "--check")
    assert proc.returncode == 0, proc.stdout
    assert recap(proc.stdout)["lab1"]["changed"] >= 1
    assert "/dev/vdb" in proc.stdout and "ext4" in proc.stdout  # the resolved device and what would happen
    assert probe(blank, "lab1") == ""
    assert fstab_lines(blank, "lab1") == []


def test_blank_disk_is_formatted_mounted_by_uuid_and_survives_reboots(blank: Lab, tmp_path: Path) -> None:
    """Formatted once and mounted by UUID; a boot with the disk detached is not blocked, and the next mounts it."""
    inventory = disks_inventory(blank, tmp_path)
    first = up_disks(blank, inventory, "lab1")
    assert first.returncode == 0, first.stdout
    assert "lab1-data" in first.stdout and "/dev/vdb" in first.stdout  # cloud name -> device, in the output
    uuid = mounted_uuid(blank, "lab1")
    assert "TYPE=ext4" in probe(blank, "lab1")
    (line,) = fstab_lines(blank, "lab1")
    assert line.startswith(f"UUID={uuid} {MOUNT} ext4 ")
    assert "nofail" in line and "x-systemd.device-timeout=" in line
    assert blank.sh("lab1", f"stat -c %U {MOUNT}").strip() == "debian"

    second = up_disks(blank, inventory, "lab1")
    assert second.returncode == 0
    assert recap(second.stdout)["lab1"]["changed"] == 0

    smoke = blank.provision("test", "-i", str(inventory), "--limit", "lab1", "-k", "disk")
    assert smoke.returncode == 0, smoke.stdout

    detached = blank.provision("lab", "restart", "lab1", "--no-data-disk")
    assert detached.returncode == 0, detached.stderr  # booted, and sshd answers
    # Not blocked: multi-user.target is reached while systemd may still wait out the missing disk's device
    # timeout (nofail orders the mount after nothing); is-system-running would say "starting" until it ends.
    reached = "timeout 120 sh -c 'until systemctl -q is-active multi-user.target; do sleep 1; done'; "
    assert blank.sh("lab1", reached + "systemctl is-active multi-user.target || true").strip() == "active"
    assert blank.sh("lab1", f"findmnt -n {MOUNT} || echo not-mounted").strip() == "not-mounted"
    reattached = blank.provision("lab", "restart", "lab1")
    assert reattached.returncode == 0, reattached.stderr
    # sshd may answer before the mount (nofail orders nothing after it): mounted once the boot's jobs are done.
    assert blank.sh("lab1", "systemctl is-system-running --wait || true").strip() in ("running", "degraded")
    assert mounted_uuid(blank, "lab1") == uuid


def test_existing_filesystem_is_mounted_as_it_is(blank: Lab, tmp_path: Path) -> None:
    blank.sh("lab2", "sudo mkfs.ext4 -q -L keep /dev/vdb")
    uuid = blank.sh("lab2", "sudo blkid -s UUID -o value /dev/vdb").strip()
    blank.sh(
        "lab2",
        "sudo mount /dev/vdb /mnt && echo weights | sudo tee /mnt/model.bin >/dev/null && sudo umount /mnt",
    )
    proc = up_disks(blank, disks_inventory(blank, tmp_path), "lab2")
    assert proc.returncode == 0, proc.stdout
    assert mounted_uuid(blank, "lab2") == uuid, "reformatted"
    assert blank.sh("lab2", f"cat {MOUNT}/model.bin").strip() == "weights"


@pytest.mark.parametrize(
    ("prepare", "found", "then_wipe"),
    [
        (lambda lab: python_as_root(lab, "lab2", DOS_PARTITION_TABLE), "dos", True),
        (lambda lab: python_as_root(lab, "lab2", LVM_PV_LABEL), "LVM", False),
        (lambda lab: python_as_root(lab, "lab2", LUKS_SIGNATURE), "LUKS", False),
    ],
    ids=["partition-table", "lvm-pv", "luks-signature"],
)
def test_disk_that_is_not_blank_stops_only_its_host(  # type: ignore[no-untyped-def]
    blank: Lab, tmp_path: Path, prepare, found: str, then_wipe: bool
) -> None:
    prepare(blank)
    assert probe(blank, "lab2") != "", "the test did not manage to put a signature on the disk"
    before = first_mib(blank, "lab2")
    proc = up_disks(blank, disks_inventory(blank, tmp_path), "lab1,lab2")
    assert proc.returncode == 1, proc.stdout
    stats = recap(proc.stdout)
    assert stats["lab2"]["failed"] == 1 and stats["lab2"]["changed"] == 0
    assert stats["lab1"]["failed"] == 0 and mounted_uuid(blank, "lab1")  # the other host still converged
    refusal = next(line for line in proc.stdout.splitlines() if "is not blank" in line)
    assert "/dev/vdb" in refusal and found.lower() in refusal.lower() and 'disks_wipe: ["lab2-data"]' in refusal
    assert first_mib(blank, "lab2") == before, "the disk was written to"
    assert fstab_lines(blank, "lab2") == []
    if not then_wipe:
        return  # one case is enough to show disks_wipe at work: each run costs a minute under TCG

    wiped = up_disks(blank, disks_inventory(blank, tmp_path, disks_wipe=["lab2-data"]), "lab2")
    assert wiped.returncode == 0, wiped.stdout
    assert "TYPE=ext4" in probe(blank, "lab2") and mounted_uuid(blank, "lab2")


MIB, GIB = 1 << 20, 1 << 30
# The README's guarantee on the lab's 20 GiB disk: any 16 MiB of data without a zero byte is found.
GUARANTEED = 16 * MIB

# An ext4 that starts at 1 MiB, as a wiped partition table leaves it: one partition over the whole disk, an
# ext4 on it, then the first and last MiB of the disk zeroed (the partition table goes with the first).
EXT4_PAST_THE_FIRST_MIB = """
set -e
echo {table} | base64 -d | python3 -
blockdev --rereadpt /dev/vdb
udevadm settle
mkfs.ext4 -q /dev/vdb1
dd if=/dev/zero of=/dev/vdb bs=1M count=1 status=none conv=fsync
last=$(( $(blockdev --getsize64 /dev/vdb) / 1048576 - 1 ))
dd if=/dev/zero of=/dev/vdb bs=1M count=1 seek=$last status=none conv=fsync
udevadm settle
blockdev --rereadpt /dev/vdb
udevadm settle
"""

WHOLE_DISK_PARTITION = """
import os, struct
fd = os.open("/dev/vdb", os.O_WRONLY)
sectors = os.lseek(fd, 0, os.SEEK_END) // 512
entry = bytes([0, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, sectors - 2048)
os.pwrite(fd, entry, 446)
os.pwrite(fd, b"\\x55\\xaa", 510)
os.fsync(fd)
"""

# The role's scan, run on the VM as the probe runs it (the module with AnsibleModule stubbed out).
SCAN = """
import json, os, sys, time, types
basic = types.ModuleType("ansible.module_utils.basic")
basic.AnsibleModule = object
sys.modules.update({"ansible": types.ModuleType("ansible"), "ansible.module_utils": types.ModuleType("x"),
                    "ansible.module_utils.basic": basic})
probe = types.ModuleType("disk_probe")
sys.modules["disk_probe"] = probe
exec(compile(open("/tmp/disk_probe.py").read(), "disk_probe.py", "exec"), probe.__dict__)
fd = os.open("/dev/vdb", os.O_RDONLY | os.O_EXCL)
plan = probe.plan_scan(os.lseek(fd, 0, os.SEEK_END))
started = time.monotonic()
at, read = probe.scan_for_data(fd, plan)
print(json.dumps({"data_at": at, "stride": plan.stride, "reads": len(plan.reads), "bytes": read,
                  "seconds": round(time.monotonic() - started, 3)}))
"""


def scan(lab: Lab, host: str) -> dict[str, object]:
    source = (ROOT / "playbooks/roles/disks/library/disk_probe.py").read_text()
    lab.sh(host, "cat > /tmp/disk_probe.py", stdin=source)
    out = lab.sh(host, "sudo bash -c '{ time -p python3 - ; } 2>&1'", stdin=SCAN)
    print(f"{host}: the scan of /dev/vdb: {out}")  # the time, for the record (shown with -rP)
    return dict(json.loads(out.splitlines()[0]))


def test_data_that_signatures_miss_is_found_refused_and_left_as_it_was(blank: Lab, tmp_path: Path) -> None:
    """lab1: an ext4 at 1 MiB whose partition table and first and last MiB were wiped; lab2: 16 MiB of data
    (the size the README guarantees on 20 GiB) at an offset chosen at random. blkid -p and wipefs see nothing
    on either; the scan finds both, each host stops with one line, and not a byte changes."""
    blank_scan = scan(blank, "lab2")
    assert (blank_scan["data_at"], blank_scan["stride"]) == (None, GUARANTEED)

    table = base64.b64encode(WHOLE_DISK_PARTITION.encode()).decode()
    blank.sh("lab1", "sudo sh -s", stdin=EXT4_PAST_THE_FIRST_MIB.format(table=table))
    offset = random.randrange(4 * MIB, 20 * GIB - 4 * MIB - GUARANTEED)
    print(f"lab2: {GUARANTEED} bytes of data at offset {offset}")
    python_as_root(
        blank,
        "lab2",
        f"""
import os
fd = os.open("/dev/vdb", os.O_WRONLY)
os.pwrite(fd, (bytes(range(1, 256)) * {GUARANTEED // 255 + 1})[:{GUARANTEED}], {offset})
os.fsync(fd)
""",
    )
    for host in ("lab1", "lab2"):
        assert probe(blank, host) == "" and blank.sh(host, "sudo wipefs /dev/vdb").strip() == "", host
    assert not blank.sh("lab1", "ls /sys/class/block | grep vdb1 || true").strip()
    lab1_regions = [(0, 8 * MIB), (MIB + 128 * MIB, 4 * MIB), (20 * GIB - MIB, MIB)]  # sb, a backup, the end
    lab2_regions = [(offset // MIB * MIB - MIB, GUARANTEED + 3 * MIB)]
    before = sha256_of(blank, "lab1", *lab1_regions), sha256_of(blank, "lab2", *lab2_regions)

    proc = up_disks(blank, disks_inventory(blank, tmp_path), "lab1,lab2")
    assert proc.returncode == 1, proc.stdout
    stats = recap(proc.stdout)
    assert [(stats[h]["failed"], stats[h]["changed"]) for h in ("lab1", "lab2")] == [(1, 0), (1, 0)]
    refusals = [line for line in proc.stdout.splitlines() if "is not blank" in line]
    refused_at = {}  # host -> the byte the refusal names
    for host in ("lab1", "lab2"):
        line = next(line for line in refusals if f"{host}-data" in line)
        found = re.search(
            rf"disks: /dev/vdb \(aliyun:{host}-data\) is not blank: non-zero data at offset [0-9.]+ [MG]iB "
            rf'\(byte (\d+)\); to wipe it set disks_wipe: \["{host}-data"\]$',
            line,
        )
        assert found, line
        refused_at[host] = int(found[1])
    assert MIB + 1024 <= refused_at["lab1"] < MIB + 2048, refused_at  # in the ext4 superblock at 1 MiB + 1 KiB
    assert offset <= refused_at["lab2"] < offset + GUARANTEED, (offset, refused_at)
    assert before == (sha256_of(blank, "lab1", *lab1_regions), sha256_of(blank, "lab2", *lab2_regions))
    assert fstab_lines(blank, "lab1") == fstab_lines(blank, "lab2") == []

    # Following the hint with the disk's kernel name instead of its serial: refused, naming the variable.
    unstable = up_disks(blank, disks_inventory(blank, tmp_path, disks_wipe=["/dev/vdb"]), "lab1")
    assert unstable.returncode == 1, unstable.stdout
    assert recap(unstable.stdout)["lab1"]["changed"] == 0
    assert (
        'disks_wipe: "/dev/vdb" is a kernel name, which can be another disk after a reboot; name the disk by its '
        "serial or a /dev/disk/by-id link (here: lab1-data)" in unstable.stdout
    )
    assert sha256_of(blank, "lab1", *lab1_regions) == before[0]
