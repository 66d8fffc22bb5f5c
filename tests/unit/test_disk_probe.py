"""The disks role's probe module: parsing, resolving cloud names, and the verdict on what a disk holds.

The module runs on the target; here its pure functions get data shaped like what blkid -p, wipefs --json,
/proc and sysfs give on a real host (the lab's layout: /dev/vda holds /, /dev/vdb is the data disk).
"""

import bisect
import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

import library_modules
import pytest

from provision import paths

PROBE_PATH = paths.ROLES / "disks" / "library" / "disk_probe.py"


dp = library_modules.load(PROBE_PATH)
UUID = "0b2c2a64-5cd4-4c0a-9d7b-3f3c2d9b1a10"


def device(name: str, **kwargs: Any) -> Any:
    return dp.Device(name=name, **kwargs)


def lab_host(vdb: Any = None, mounts: tuple = (), fstab: tuple = (), swaps: tuple = (), **devices: Any) -> Any:
    """vda (root, ext4 on the whole disk, mounted at /) and vdb (the data disk, serial lab1-data)."""
    vda = device("vda", major_minor="254:0", size=12 << 30, blkid={"TYPE": "ext4", "UUID": "r00t"}, busy=True)
    vdb = vdb or device("vdb")
    vdb.major_minor, vdb.size = vdb.major_minor or "254:16", vdb.size or 20 << 30
    vdb.serial = vdb.serial or "lab1-data"
    vdb.links = vdb.links or ["/dev/disk/by-id/virtio-lab1-data", "/dev/disk/by-path/pci-0000:00:05.0"]
    all_devices = {"vda": vda, "vdb": vdb, **devices}
    links = {link: d.name for d in all_devices.values() for link in d.links}
    root = dp.Mount("vda", "/", "ext4", "/dev/vda")
    kernel_paths = {f"/dev/{name}": name for name in all_devices}
    return dp.Host(all_devices, links, [root, *mounts], list(swaps), list(fstab), paths=kernel_paths)


def verdict(dev: Any, mount: str | None = "/srv/models", **host_args: Any) -> Any:
    host = lab_host(dev, **host_args)
    return dp.decide(host.devices["vdb"], host, mount, dp.system_disks(host).get("vdb", []))


# ---- parsing ----------------------------------------------------------------------------------------------


def test_parse_blkid_export() -> None:
    text = "DEVNAME=/dev/vdb\nUUID=abc\nVERSION=1.0\nLABEL=my\\ disk\nTYPE=ext4\nUSAGE=filesystem\n"
    assert dp.parse_blkid_export(text) == {
        "UUID": "abc",
        "VERSION": "1.0",
        "LABEL": "my disk",
        "TYPE": "ext4",
        "USAGE": "filesystem",
    }
    assert dp.parse_blkid_export("") == {}


def test_parse_wipefs_json() -> None:
    # util-linux 2.38 prints an empty list with blank lines in it.
    assert dp.parse_wipefs_json('{\n   "signatures": [\n\n   ]\n}\n') == []
    found = {
        "signatures": [
            {"device": "vdb", "offset": "0x200", "type": "gpt", "uuid": None, "label": None},
            {"device": "vdb", "offset": "0x4ffffe00", "type": "gpt", "uuid": None, "label": None},
            {"device": "vdb", "offset": "0x1fe", "type": "PMBR", "uuid": None, "label": None},
        ]
    }
    assert dp.parse_wipefs_json(json.dumps(found)) == ["gpt at 0x200", "gpt at 0x4ffffe00", "PMBR at 0x1fe"]


def test_parse_mountinfo_unescapes_and_skips_junk() -> None:
    text = (
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro\n"
        "30 22 254:16 / /srv/my\\040models rw,relatime shared:9 - ext4 /dev/vdb rw\n"
        "31 22 0:45 / /data rw,relatime shared:10 - btrfs /dev/vdc rw,space_cache\n"
        "garbage line\n"
    )
    assert dp.parse_mountinfo(text) == [
        ("254:0", "/", "ext4", "/dev/vda"),
        ("254:16", "/srv/my models", "ext4", "/dev/vdb"),
        ("0:45", "/data", "btrfs", "/dev/vdc"),
    ]


def test_parse_swaps_and_fstab() -> None:
    swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    swaps += "/dev/vdc  partition\t1048572\t0\t-2\n/swapfile file 1 0 -3\n"
    assert dp.parse_swaps(swaps) == ["/dev/vdc", "/swapfile"]
    fstab = (
        "# /etc/fstab\n/dev/vda / ext4 errors=remount-ro 0 1\n\n"
        "UUID=abc /srv/models ext4 defaults,nofail 0 2  # trailing comment\n/dev/vdc none swap\n"
    )
    entries = dp.parse_fstab(fstab)
    assert [(e.line, e.source, e.mount, e.fstype, e.options) for e in entries] == [
        (2, "/dev/vda", "/", "ext4", "errors=remount-ro"),
        (4, "UUID=abc", "/srv/models", "ext4", "defaults,nofail"),
        (5, "/dev/vdc", "none", "swap", "defaults"),
    ]


def test_parse_vpd_serial() -> None:
    assert dp.parse_vpd_serial(b"\x00\x80\x00\x08models  ") == "models"
    assert dp.parse_vpd_serial(b"\x00\x83\x00\x02ab") == ""
    assert dp.parse_vpd_serial(b"") == ""


def test_natural_order() -> None:
    names = ["vdaa", "nvme10n1", "vdc", "nvme2n1", "vdb"]
    assert sorted(names, key=dp.natural_key) == ["nvme2n1", "nvme10n1", "vdaa", "vdb", "vdc"]


# ---- resolving names --------------------------------------------------------------------------------------


def cloud_host() -> Any:
    devices = {
        "sdb": device("sdb", serial="models", links=["/dev/disk/by-id/google-models"]),
        "sdc": device("sdc", links=["/dev/oracleoci/oraclevdb", "/dev/disk/by-path/ip-169.254.2.2:3260-iscsi-x-lun-1"]),
        "vdb": device("vdb", serial="bp1abc"),
        "nvme1n1": device("nvme1n1", links=["/dev/disk/by-id/nvme-Alibaba_Cloud_Elastic_Block_Storage_bp1xyz"]),
        "vdc": device("vdc", serial="twin"),
        "vdd": device("vdd", serial="twin"),
        "vdb1": device("vdb1", partition=True, parent="vdb", serial="bp1abc"),
    }
    links = {link: d.name for d in devices.values() for link in d.links}
    return dp.Host(devices, links, [], [], [], paths={"/dev/vdb": "vdb", "/dev/nope": ""})


@pytest.mark.parametrize(
    ("kind", "value", "cloud", "expected"),
    [
        ("cloud_name", "models", "gcp", ("sdb", "")),
        ("cloud_name", "oraclevdb", "oci", ("sdc", "")),
        ("cloud_name", "bp1abc", "aliyun", ("vdb", "")),
        ("cloud_name", "d-bp1abc", "aliyun", ("vdb", "")),
        ("serial", "bp1xyz", "generic", ("nvme1n1", "")),  # from the NVMe by-id link
        ("device", "/dev/oracleoci/oraclevdb", "generic", ("sdc", "")),
        ("device", "/dev/vdb", "generic", ("vdb", "")),
        ("cloud_name", "other", "gcp", ("", "/dev/disk/by-id/google-other does not exist")),
        ("cloud_name", "x", "generic", ("", "cloud_name needs disks_cloud set to gcp, oci or aliyun")),
        ("serial", "twin", "generic", ("", "serial twin matches several disks: vdc, vdd (multipath is not supported)")),
        ("serial", "none", "generic", ("", "no disk has this serial")),
        ("device", "/dev/nope", "generic", ("", "/dev/nope does not exist")),
    ],
)
def test_resolve(kind: str, value: str, cloud: str, expected: tuple[str, str]) -> None:
    name, why = dp.resolve(kind, value, cloud, cloud_host())
    assert (name, why.split(" (are the")[0]) == expected


def test_system_disks_follow_partitions_and_device_mapper() -> None:
    devices = {
        "sda": device("sda", partitions=["sda1", "sda2"]),
        "sda1": device("sda1", partition=True, parent="sda"),
        "sda2": device("sda2", partition=True, parent="sda"),
        "sdb": device("sdb"),
        "sdc": device("sdc"),
        "dm-0": device("dm-0", slaves=["sdb", "sdc"]),
    }
    mounts = [dp.Mount("dm-0", "/", "xfs", "/dev/mapper/vg-root"), dp.Mount("sda1", "/boot", "ext4", "/dev/sda1")]
    host = dp.Host(devices, {}, mounts, [], [])
    assert dp.system_disks(host) == {"sdb": ["/"], "sdc": ["/"], "sda": ["/boot"]}


# ---- the verdict ------------------------------------------------------------------------------------------

BLANK = {"verdict": "blank", "reason": "", "wipeable": False}


@pytest.mark.parametrize(
    ("case", "dev", "host_args", "expected"),
    [
        ("blank", device("vdb"), {}, BLANK),
        (
            "ext4",
            device("vdb", blkid={"TYPE": "ext4", "UUID": UUID, "USAGE": "filesystem"}, signatures=["ext4 at 0x438"]),
            {},
            {"verdict": "filesystem", "fstype": "ext4", "uuid": UUID},
        ),
        (
            "xfs",
            device("vdb", blkid={"TYPE": "xfs", "UUID": UUID}, signatures=["xfs at 0x0"]),
            {},
            {"verdict": "filesystem", "fstype": "xfs"},
        ),
        (
            "dos partition table",
            device("vdb", blkid={"PTTYPE": "dos", "PTUUID": "78563412"}, signatures=["dos at 0x1fe"]),
            {},
            {"verdict": "refuse", "reason": "dos partition table", "wipeable": True},
        ),
        (
            "gpt with a partition",
            device(
                "vdb",
                blkid={"PTTYPE": "gpt"},
                signatures=["gpt at 0x200", "PMBR at 0x1fe"],
                partitions=["vdb1"],
                partition_types={"vdb1": "ext4"},
            ),
            {},
            {"verdict": "refuse", "reason": "gpt partition table with partitions vdb1 (ext4)", "wipeable": True},
        ),
        (
            "LVM physical volume",
            device("vdb", blkid={"TYPE": "LVM2_member", "USAGE": "raid"}, signatures=["LVM2_member at 0x218"]),
            {},
            {"verdict": "refuse", "reason": "an LVM physical volume (LVM2_member)", "wipeable": True},
        ),
        (
            "LUKS",
            device("vdb", blkid={"TYPE": "crypto_LUKS", "USAGE": "crypto"}, signatures=["crypto_LUKS at 0x0"]),
            {},
            {"verdict": "refuse", "reason": "a LUKS encrypted volume (crypto_LUKS)", "wipeable": True},
        ),
        (
            "RAID member",
            device("vdb", blkid={"TYPE": "linux_raid_member"}, signatures=["linux_raid_member at 0x1000"]),
            {},
            {"verdict": "refuse", "reason": "a Linux RAID member (linux_raid_member)", "wipeable": True},
        ),
        (
            "swap signature (not active)",
            device("vdb", blkid={"TYPE": "swap", "USAGE": "other"}, signatures=["swap at 0xff6"]),
            {},
            {"verdict": "refuse", "reason": "a swap area (swap)", "wipeable": True},
        ),
        (
            "unknown signature",
            device("vdb", blkid={"TYPE": "ntfs", "USAGE": "filesystem"}, signatures=["ntfs at 0x3"]),
            {},
            {"verdict": "refuse", "reason": "a ntfs signature (filesystem)", "wipeable": True},
        ),
        (
            "ext4 next to a stale partition table",
            device("vdb", blkid={"TYPE": "ext4", "PTTYPE": "dos"}, signatures=["ext4 at 0x438", "dos at 0x1fe"]),
            {},
            {"verdict": "refuse", "reason": "a ext4 signature and a dos partition table", "wipeable": True},
        ),
        (
            "only a backup GPT header left",
            device("vdb", signatures=["gpt at 0x4ffffe00"]),
            {},
            {"verdict": "refuse", "reason": "signatures gpt at 0x4ffffe00", "wipeable": True},
        ),
        (
            "ambivalent",
            device("vdb", ambivalent=True, signatures=["xfs at 0x0", "ext4 at 0x438"]),
            {},
            {"verdict": "refuse", "wipeable": True},
        ),
        (
            "data without any signature",
            device("vdb", data_at=(1 << 20) + 1080),
            {},
            {"verdict": "refuse", "reason": "non-zero data at offset 1.0 MiB (byte 1049656)", "wipeable": True},
        ),
        (
            "active swap",
            device("vdb", blkid={"TYPE": "swap"}, busy=True),
            {"swaps": ("vdb",)},
            {"verdict": "refuse", "reason": "is in use as swap", "wipeable": False},
        ),
        (
            "LVM holder",
            device("vdb", blkid={"TYPE": "LVM2_member"}, holders=["dm-0"], busy=True),
            {},
            {"verdict": "refuse", "wipeable": False},
        ),
        (
            "busy without a visible user",
            device("vdb", busy=True),
            {},
            {"verdict": "refuse", "reason": "is busy: the kernel or a program holds it open exclusively"},
        ),
        (
            "partition mounted",
            device("vdb", blkid={"PTTYPE": "dos"}, partitions=["vdb1"], busy=True),
            {"mounts": (dp.Mount("vdb1", "/mnt", "ext4", "/dev/vdb1"),)},
            {"verdict": "refuse", "reason": "its partition vdb1 is mounted at /mnt", "wipeable": False},
        ),
        (
            "mounted at the requested mount",
            device("vdb", blkid={"TYPE": "ext4", "UUID": UUID}, signatures=["ext4 at 0x438"], busy=True),
            {"mounts": (dp.Mount("vdb", "/srv/models", "ext4", f"UUID={UUID}"),)},
            {"verdict": "mounted", "uuid": UUID, "stale_mounts": []},
        ),
        (
            "mounted elsewhere by hand",
            device("vdb", blkid={"TYPE": "ext4", "UUID": UUID}, signatures=["ext4 at 0x438"], busy=True),
            {"mounts": (dp.Mount("vdb", "/mnt", "ext4", "/dev/vdb"),)},
            {"verdict": "refuse", "reason": "is mounted at /mnt, not from /etc/fstab; unmount it first"},
        ),
        (
            "moved: fstab mounts it elsewhere",
            device("vdb", blkid={"TYPE": "ext4", "UUID": UUID}, signatures=["ext4 at 0x438"], busy=True),
            {
                "mounts": (dp.Mount("vdb", "/old", "ext4", "/dev/vdb"),),
                "fstab": (dp.FstabEntry(9, f"UUID={UUID}", "/old", "ext4", "defaults"),),
            },
            {"verdict": "filesystem", "stale_mounts": ["/old"]},
        ),
        (
            "mount point taken by another disk",
            device("vdb"),
            {"mounts": (dp.Mount("vdc", "/srv/models", "xfs", "/dev/vdc"),)},
            {
                "verdict": "refuse",
                "reason": "/srv/models already has /dev/vdc mounted; unmount it or choose another mount",
            },
        ),
        ("read-only blank disk", device("vdb", ro=True), {}, {"verdict": "refuse", "reason": "is read-only"}),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_decide(case: str, dev: Any, host_args: dict[str, Any], expected: dict[str, Any]) -> None:
    decision = verdict(dev, **host_args)
    assert {key: getattr(decision, key) for key in expected} == expected, case


def test_the_root_disk_is_refused_and_never_wipeable() -> None:
    host = lab_host()
    vda = host.devices["vda"]
    decision = dp.decide(vda, host, "/srv/models", dp.system_disks(host).get("vda", []))
    assert (decision.verdict, decision.reason, decision.wipeable) == (
        "refuse",
        "holds the / filesystem of this host",
        False,
    )


def test_ext4_on_a_partition_is_mounted_as_it_is() -> None:
    ext4 = {"TYPE": "ext4", "UUID": UUID}
    part = device("vdb1", partition=True, parent="vdb", blkid=ext4, signatures=["ext4 at 0x438"])
    host = lab_host(device("vdb", partitions=["vdb1"], blkid={"PTTYPE": "dos"}), vdb1=part)
    decision = dp.decide(part, host, "/srv/models", [])
    assert (decision.verdict, decision.uuid) == ("filesystem", UUID)


# ---- the plan: errors, wiping, options --------------------------------------------------------------------

PARAMS = {
    "cloud": "generic",
    "defaults": {"selinux_type": "container_file_t"},
    "auto": False,
    "auto_mount_prefix": "/data",
    "auto_fstype": "ext4",
    "wipe": [],
    "device_timeout": "90s",
}


def run_probe(host: Any, devices: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    inspected: list[str] = []
    result = dp.probe({**PARAMS, "devices": devices, **params}, host, lambda d: inspected.append(d.name))
    result["inspected"] = inspected
    return result


DOS = {"PTTYPE": "dos", "PTUUID": "78563412"}


def test_refusal_is_one_line_naming_device_finding_and_variable() -> None:
    host = lab_host(device("vdb", blkid=DOS, signatures=["dos at 0x1fe"]))
    result = run_probe(host, [{"device": "/dev/vdb", "mount": "/srv/models"}])
    (disk,) = result["disks"]
    assert disk["error"] == (
        'disks: /dev/vdb (serial lab1-data) is not blank: dos partition table; to wipe it set disks_wipe: ["lab1-data"]'
    )
    assert "\n" not in disk["error"] and len(disk["error"]) < 200
    assert (
        disk["summary"] == "/dev/vdb -> /dev/vdb (20.0 GiB, serial lab1-data): refused: not blank: dos partition table"
    )
    assert (disk["wipe"], disk["format"]) == (False, False)


def test_refusal_of_a_disk_with_a_mountable_partition_says_how_to_mount_it() -> None:
    vdb = device("vdb", blkid=DOS, signatures=["dos at 0x1fe"], partitions=["vdb1", "vdb2"])
    vdb.partition_types = {"vdb1": "", "vdb2": "xfs"}
    (disk,) = run_probe(lab_host(vdb), [{"device": "/dev/vdb", "mount": "/srv/models"}])["disks"]
    assert disk["error"] == (
        "disks: /dev/vdb (serial lab1-data) is not blank: dos partition table with partitions vdb1 (no filesystem), "
        'vdb2 (xfs); to wipe it set disks_wipe: ["lab1-data"] (or device: /dev/vdb2 mounts that partition as it is)'
    )
    vdb.partition_types = {"vdb1": "", "vdb2": ""}
    (disk,) = run_probe(lab_host(vdb), [{"device": "/dev/vdb", "mount": "/srv/models"}])["disks"]
    assert disk["error"].endswith('to wipe it set disks_wipe: ["lab1-data"]')


@pytest.mark.parametrize("name", ["lab1-data", "/dev/disk/by-id/virtio-lab1-data"])
def test_disks_wipe_by_any_name_allows_wiping(name: str) -> None:
    host = lab_host(device("vdb", blkid=DOS, signatures=["dos at 0x1fe"]))
    (disk,) = run_probe(host, [{"serial": "lab1-data", "mount": "/srv/models"}], wipe=[name])["disks"]
    assert (disk["error"], disk["wipe"], disk["format"], disk["fstype"]) == ("", True, True, "ext4")
    assert disk["summary"].startswith("serial:lab1-data -> /dev/vdb (20.0 GiB, serial lab1-data): not blank (dos")


def test_disks_wipe_never_overrides_a_disk_in_use_nor_a_filesystem() -> None:
    swap = lab_host(device("vdb", blkid={"TYPE": "swap"}), swaps=("vdb",))
    (disk,) = run_probe(swap, [{"device": "/dev/vdb", "mount": "/srv/models"}], wipe=["lab1-data"])["disks"]
    assert (disk["wipe"], disk["error"]) == (False, "disks: /dev/vdb (serial lab1-data) is in use as swap")
    ext4 = lab_host(device("vdb", blkid={"TYPE": "ext4", "UUID": UUID}, signatures=["ext4 at 0x438"]))
    (disk,) = run_probe(ext4, [{"device": "/dev/vdb", "mount": "/srv/models", "fstype": "xfs"}], wipe=["lab1-data"])[
        "disks"
    ]
    assert (disk["verdict"], disk["wipe"], disk["format"], disk["fstype"], disk["uuid"]) == (
        "filesystem",
        False,
        False,
        "ext4",
        UUID,
    )
    assert "holds ext4, not xfs: a filesystem is never reformatted" in disk["summary"]


def test_missing_disk_names_what_was_looked_for_and_what_is_there() -> None:
    (disk,) = run_probe(lab_host(), [{"serial": "lab9-data", "mount": "/srv/models"}])["disks"]
    assert disk["error"] == (
        "disks: serial:lab9-data matches no disk: no disk has this serial; disks here: vda, vdb serial lab1-data"
    )


def test_the_same_disk_named_twice_is_refused() -> None:
    devices = [{"device": "/dev/vdb", "mount": "/a"}, {"serial": "lab1-data", "mount": "/b"}]
    first, second = run_probe(lab_host(), devices)["disks"]
    assert first["verdict"] == "blank"
    assert second["error"].endswith("is the same disk as /dev/vdb; name each disk once")


def test_plan_of_a_blank_disk() -> None:
    host = lab_host(device("vdb", links=["/dev/disk/by-path/ip-169.254.2.2:3260-iscsi-iqn.x-lun-1"], iscsi=True))
    (disk,) = run_probe(host, [{"device": "/dev/vdb", "mount": "/srv/models", "owner": "debian", "mode": "0750"}])[
        "disks"
    ]
    assert {k: disk[k] for k in ("verdict", "format", "fstype", "uuid", "owner", "group", "mode", "passno")} == {
        "verdict": "blank",
        "format": True,
        "fstype": "ext4",
        "uuid": "",
        "owner": "debian",
        "group": "root",
        "mode": "0750",
        "passno": 2,
    }
    assert disk["mount_options"] == "defaults,nofail,x-systemd.device-timeout=90s,_netdev"
    assert disk["selinux_type"] == "container_file_t"
    assert disk["summary"] == (
        "/dev/vdb -> /dev/vdb (20.0 GiB, serial lab1-data): blank: create ext4, mount at /srv/models"
    )


@pytest.mark.parametrize(
    ("options", "netdev", "expected"),
    [
        ("defaults", False, "defaults,nofail,x-systemd.device-timeout=90s"),
        ("noatime,nofail", False, "noatime,nofail,x-systemd.device-timeout=90s"),
        ("", True, "defaults,nofail,x-systemd.device-timeout=90s,_netdev"),
        ("_netdev,ro", True, "_netdev,ro,nofail,x-systemd.device-timeout=90s"),
    ],
)
def test_mount_options(options: str, netdev: bool, expected: str) -> None:
    assert dp.mount_options(options, "90s", netdev) == expected


# ---- auto mode --------------------------------------------------------------------------------------------


def test_assign_auto_mounts() -> None:
    assert dp.assign_auto_mounts("/data", set(), {}, ["vdc", "vdb"]) == {"vdb": "/data", "vdc": "/data1"}
    # Existing auto disks keep their mount points; configured and used paths are skipped.
    assigned = dp.assign_auto_mounts("/data", {"/data1"}, {"vdd": "/data"}, ["vdb", "vdc"])
    assert assigned == {"vdd": "/data", "vdb": "/data2", "vdc": "/data3"}


def test_auto_takes_blank_disks_keeps_its_own_and_leaves_the_rest_alone() -> None:
    ours = device("vdc", size=1 << 30, blkid={"TYPE": "ext4", "UUID": UUID}, signatures=["ext4 at 0x438"], busy=True)
    lvm = device("vdd", size=1 << 30, blkid={"TYPE": "LVM2_member"}, signatures=["LVM2_member at 0x218"])
    blank = device("vde", size=1 << 30)
    fstab = (dp.FstabEntry(7, f"UUID={UUID}", "/data", "ext4", "defaults,nofail"),)
    mounts = (dp.Mount("vdc", "/data", "ext4", f"UUID={UUID}"),)
    others = {"vdc": ours, "vdd": lvm, "vde": blank, "loop0": device("loop0", size=1)}
    host = lab_host(device("vdb"), mounts=mounts, fstab=fstab, **others)
    result = run_probe(host, [{"device": "/dev/vdb", "mount": "/srv/models"}], auto=True)
    assert [(d["source"], d["device"], d["verdict"], d["mount"]) for d in result["disks"]] == [
        ("devices", "/dev/vdb", "blank", "/srv/models"),
        ("auto", "/dev/vdc", "mounted", "/data"),
        ("auto", "/dev/vde", "blank", "/data1"),
    ]
    assert [d["error"] for d in result["disks"]] == ["", "", ""]
    assert result["ignored"] == [
        {"device": "/dev/vda", "reason": "holds the / filesystem of this host"},
        {"device": "/dev/vdd", "reason": "an LVM physical volume (LVM2_member)"},
    ]
    assert "loop0" not in result["inspected"]
    assert result["msg"].splitlines()[-1] == "auto: left /dev/vdd alone: an LVM physical volume (LVM2_member)"


def test_without_auto_only_named_disks_are_inspected() -> None:
    host = lab_host(vdc=device("vdc"))
    result = run_probe(host, [{"device": "/dev/vdb", "mount": "/srv/models"}])
    assert result["inspected"] == ["vdb"]
    assert result["ignored"] == []


def test_gather_host_reads_a_sysfs_tree(tmp_path: Path) -> None:
    """gather_host() on a fake /sys/class/block: partitions, holders and serials end up in the right places."""
    for name, files in {
        "vdb": {"dev": "254:16", "size": "41943040", "serial": "lab1-data", "ro": "0"},
        "vdb1": {"dev": "254:17", "size": "2048", "partition": "1"},
        "sdb": {"dev": "8:16", "size": "8"},
    }.items():
        real = tmp_path / "devices" / ("vdb/vdb1" if name == "vdb1" else name)
        real.mkdir(parents=True)
        for key, value in files.items():
            (real / key).write_text(value + "\n")
        (tmp_path / "class").mkdir(exist_ok=True)
        (tmp_path / "class" / name).symlink_to(real)
    (tmp_path / "devices/vdb/vdb1/holders").mkdir()
    (tmp_path / "devices/vdb/vdb1/holders/dm-0").write_text("")
    (tmp_path / "devices/sdb/device").mkdir()
    (tmp_path / "devices/sdb/device/vpd_pg80").write_bytes(b"\x00\x80\x00\x06models")
    host = dp.gather_host([], [], sys_block=str(tmp_path / "class"))
    vdb = host.devices["vdb"]
    assert (vdb.size, vdb.serial, vdb.partitions, vdb.holders) == (20 << 30, "lab1-data", ["vdb1"], ["dm-0"])
    assert (host.devices["vdb1"].partition, host.devices["vdb1"].parent) == (True, "vdb")
    assert host.devices["sdb"].serial == "models"


# ---- disks_wipe names ---------------------------------------------------------------------------------------


def twin_host() -> Any:
    """The lab host, plus vdc and vdd that report the same serial (one disk on two paths, or a cloud's mistake)."""
    return lab_host(vdc=device("vdc", serial="twin"), vdd=device("vdd", serial="twin"))


@pytest.mark.parametrize(
    ("wipe", "problems"),
    [
        (["lab1-data"], []),
        (["d-lab1-data", "/dev/disk/by-id/virtio-lab1-data", "/dev/disk/by-path/pci-0000:00:05.0"], []),
        (
            ["/dev/vdb"],
            [
                'disks_wipe: "/dev/vdb" is a kernel name, which can be another disk after a reboot; name the disk '
                "by its serial or a /dev/disk/by-id link (here: lab1-data)"
            ],
        ),
        (["/dev/nvme1n1"], ['disks_wipe: "/dev/nvme1n1" is a kernel name, which can be another disk after a reboot;']),
        (
            ["twin"],
            ['disks_wipe: "twin" names 2 disks (/dev/vdc, /dev/vdd); name one of them by its /dev/disk/by-id or'],
        ),
    ],
)
def test_wipe_names_that_could_wipe_the_wrong_disk(wipe: list[str], problems: list[str]) -> None:
    found = dp.wipe_problems(wipe, twin_host(), [])
    assert len(found) == len(problems)
    assert all(line.startswith(expected) and "\n" not in line for line, expected in zip(found, problems, strict=True))


def test_a_wipe_name_of_two_disks_stops_the_host_before_any_disk_is_read() -> None:
    result = run_probe(twin_host(), [{"serial": "lab1-data", "mount": "/srv/models"}], wipe=["lab1-data", "twin"])
    assert result["failed"] is True
    assert result["msg"].startswith('disks_wipe: "twin" names 2 disks (/dev/vdc, /dev/vdd)')
    assert (result["disks"], result["inspected"]) == ([], [])


def test_a_cloud_name_counts_as_a_name_of_its_disk() -> None:
    """On GCP `models` is the disk's name: disks_wipe may use it, and it is one more name that may be ambiguous."""
    host = lab_host(sdc=device("sdc", serial="models"))
    assert dp.wipe_problems(["models"], host, []) == []  # only sdc's serial
    assert dp.wipe_problems(["models"], host, [("vdb", "models")]) == [
        'disks_wipe: "models" names 2 disks (/dev/sdc, /dev/vdb); name one of them by its /dev/disk/by-id or by-path '
        "link"
    ]
    assert dp.wipe_problems(["lab1-data"], host, [("vdb", "models")]) == []


def test_a_disk_without_a_stable_name_gets_no_kernel_name_as_wipe_hint() -> None:
    vdb = device("vdb", blkid=DOS, signatures=["dos at 0x1fe"])
    host = lab_host(vdb)
    vdb.serial, vdb.links = "", []
    (disk,) = run_probe(host, [{"device": "/dev/vdb", "mount": "/srv/models"}])["disks"]
    assert disk["error"] == "disks: /dev/vdb is not blank: dos partition table; it has no stable name for disks_wipe"


# ---- the scan for data ------------------------------------------------------------------------------------

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def covers(plan: Any, offset: int) -> bool:
    """Whether one of the plan's reads covers the byte at `offset`."""
    index = bisect.bisect_right(plan.reads, (offset, 1 << 62)) - 1
    return index >= 0 and offset < plan.reads[index][0] + plan.reads[index][1]


@pytest.mark.parametrize(
    ("size", "stride", "strided"),
    [
        (4 * MIB, 16 * MIB, 1),  # the first and last 4 MiB are the whole disk
        (6 * MIB + 512, 16 * MIB, 1),
        (1 * GIB, 16 * MIB, 64),
        (20 * GIB, 16 * MIB, 1280),  # the lab's data disk
        (20 * GIB + 3 * 512, 16 * MIB, 1281),  # not a multiple of 4 KiB: the last read comes back short
        (32 * GIB, 16 * MIB, 2048),
        (32 * GIB + 1, 32 * MIB, 1025),
        (100 * GIB, 64 * MIB, 1600),
        (2 * TIB, 1 * GIB, 2048),
        (64 * TIB, 32 * GIB, 2048),
        (1 << 50, 512 * GIB, 2048),
    ],
)
def test_scan_plan(size: int, stride: int, strided: int) -> None:
    plan = dp.plan_scan(size)
    assert plan.stride == stride
    assert len(range(0, size, stride)) == strided
    assert all(covers(plan, offset) for offset in range(0, size, stride))  # 4 KiB at every multiple of the stride
    edges = [*range(0, min(4 * MIB, size), 4 * KIB), *range(max(0, size - 4 * MIB), size, 4 * KIB), size - 1]
    assert all(covers(plan, offset) for offset in edges)  # the first and last 4 MiB whole
    assert all(covers(plan, offset) for offset in dp.metadata_offsets(size))
    for (start, length), (after, _) in itertools.pairwise(plan.reads):
        assert start % 4096 == length % 4096 == 0 and start + length <= after  # aligned for O_DIRECT, apart
    assert plan.reads[-1][0] < size <= plan.reads[-1][0] + plan.reads[-1][1]
    # Bounded whatever the size: 2048 strided reads, 8 of 1 MiB at the ends, the metadata places.
    assert len(dp.metadata_offsets(size)) <= 80
    assert len(plan.reads) <= 2048 + 8 + 80
    assert sum(length for _, length in plan.reads) <= 8 * MIB + (2048 + 80) * 4 * KIB


@pytest.mark.parametrize("size", [1 * GIB, 20 * GIB, 100 * GIB, 2 * TIB])
def test_a_region_of_stride_bytes_anywhere_is_read_and_no_smaller_size_is_promised(size: int) -> None:
    """The README's guarantee, checked on the plan: any `stride` bytes in a row hold a byte the scan reads; and
    there is a gap of stride - 4 KiB between reads, so no smaller size could be promised."""
    plan = dp.plan_scan(size)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    for start in [0, 1, size - plan.stride] + [rng.randrange(size - plan.stride + 1) for _ in range(2000)]:
        # The region [start, start + stride) holds exactly one multiple of the stride, and that byte is read.
        assert covers(plan, -(-start // plan.stride) * plan.stride), (seed, start)
    gaps = [after - (start + length) for (start, length), (after, _) in itertools.pairwise(plan.reads)]
    assert max(gaps) == plan.stride - 4096


def test_metadata_places_of_an_ext4_on_a_partition_at_1_mib() -> None:
    offsets = dp.metadata_offsets(20 * GIB)
    ext4_backups = [MIB + group * 128 * MIB for group in (1, 3, 5, 7, 9, 25, 27, 49, 81, 125)]
    assert set(ext4_backups) <= set(offsets)
    assert {64 * KIB, 64 * MIB, MIB + 64 * MIB} <= set(offsets)  # btrfs, on the disk and on the partition
    assert 5 * GIB in offsets  # the second allocation group of an XFS on the whole 20 GiB disk
    assert MIB + 3 * 128 * MIB not in range(0, 20 * GIB, 16 * MIB)  # found only because it is listed


def sparse_device(tmp_path: Path, size: int, *regions: tuple[int, bytes]) -> int:
    """A sparse file of `size` bytes, zeros except `regions`, opened read-only as a stand-in for a disk."""
    path = tmp_path / "disk.img"
    with path.open("wb") as disk:
        disk.truncate(size)
        for offset, data in regions:
            disk.seek(offset)
            disk.write(data)
    return os.open(path, os.O_RDONLY)


def nonzero(length: int) -> bytes:
    return (bytes(range(1, 256)) * (length // 255 + 1))[:length]


@pytest.mark.parametrize(
    ("case", "size", "regions", "found"),
    [
        ("zeros everywhere", 20 * GIB, [], None),
        ("an ext4 superblock at 1 MiB + 1 KiB", 20 * GIB, [(MIB + 1024, b"\x53\xef")], MIB + 1024),
        ("a backup superblock of that ext4", 2 * GIB, [(MIB + 3 * 128 * MIB, nonzero(1024))], MIB + 3 * 128 * MIB),
        ("one byte in the last 4 MiB", 20 * GIB + 512, [(20 * GIB - 3 * MIB + 7, b"x")], 20 * GIB - 3 * MIB + 7),
        ("two places: the lower is reported", 20 * GIB, [(19 * GIB, b"x"), (8 * GIB, b"y")], 8 * GIB),
        ("a small file between the reads", 20 * GIB, [(11 * GIB + 4096, nonzero(16 * MIB - 8192))], None),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_scan_for_data(tmp_path: Path, case: str, size: int, regions: list[tuple[int, bytes]], found: Any) -> None:
    fd = sparse_device(tmp_path, size, *regions)
    try:
        plan = dp.plan_scan(size)
        at, read = dp.scan_for_data(fd, plan)
    finally:
        os.close(fd)
    assert at == found, case
    if found is None:  # everything was read: the reads' lengths, the last one short of a 4 KiB block
        assert read == sum(min(length, size - start) for start, length in plan.reads)


def test_scan_finds_a_region_of_the_guaranteed_size_at_a_random_offset(tmp_path: Path) -> None:
    size = 20 * GIB
    stride = dp.plan_scan(size).stride
    seed = random.randrange(1 << 32)
    start = random.Random(seed).randrange(4 * MIB, size - 4 * MIB - stride)  # away from the ends read whole
    fd = sparse_device(tmp_path, size, (start, nonzero(stride)))
    try:
        at, _ = dp.scan_for_data(fd, dp.plan_scan(size))
    finally:
        os.close(fd)
    assert at is not None and start <= at < start + stride, (seed, start, at)


# ---- probing again before mkfs ----------------------------------------------------------------------------


def planned(dev: Any, **host_args: Any) -> dict[str, Any]:
    """The plan entry the first probe makes for vdb."""
    host = lab_host(dev, **host_args)
    (disk,) = run_probe(host, [{"serial": "lab1-data", "mount": "/srv/models"}], wipe=["lab1-data"])["disks"]
    return disk


@pytest.mark.parametrize(
    ("case", "then", "now", "why"),
    [
        ("still blank", device("vdb"), device("vdb"), ""),
        ("still the same partition table", device("vdb", blkid=DOS), device("vdb", blkid=DOS), ""),
        (
            "data written since",
            device("vdb"),
            device("vdb", data_at=5 * GIB),
            "disks: /dev/vdb (serial lab1-data) changed since it was probed (was: blank; "
            "now: non-zero data at offset 5.0 GiB (byte 5368709120))",
        ),
        (
            "a filesystem made since",
            device("vdb"),
            device("vdb", blkid={"TYPE": "xfs", "UUID": UUID}, signatures=["xfs at 0x0"]),
            "disks: /dev/vdb (serial lab1-data) changed since it was probed (was: blank; now: filesystem)",
        ),
        (
            "other contents than the ones disks_wipe was meant for",
            device("vdb", blkid=DOS),
            device("vdb", blkid={"PTTYPE": "gpt"}),
            "disks: /dev/vdb (serial lab1-data) changed since it was probed (was: dos partition table; "
            "now: gpt partition table)",
        ),
        (
            "mounted since",
            device("vdb"),
            device("vdb", busy=True),
            "disks: /dev/vdb (serial lab1-data) changed since it was probed (was: blank; "
            "now: is busy: the kernel or a program holds it open exclusively)",
        ),
        (
            "another disk under the name",
            device("vdb"),
            device("vdb", serial="lab9-data"),
            "disks: /dev/vdb (serial lab1-data) is no longer the disk that was probed "
            "(now: 20.0 GiB, serial lab9-data)",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_changed_since_the_probe(case: str, then: Any, now: Any, why: str) -> None:
    plan = planned(then)
    assert plan["format"], case
    host = lab_host(now)
    decision = dp.decide(host.devices["vdb"], host, plan["mount"], [])
    assert dp.changed_since(plan, host.devices["vdb"], decision) == why


def test_a_disk_gone_since_the_probe() -> None:
    assert dp.changed_since(planned(device("vdb")), None, None) == (
        "disks: /dev/vdb (serial lab1-data) is no longer the disk that was probed (now: gone)"
    )
