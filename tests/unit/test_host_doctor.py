"""host_doctor's parsing: what the target-side module makes of /proc, sysfs, nvidia-smi, docker and lsblk."""

import json

import library_modules
import pytest

from provision import paths

host_doctor = library_modules.load(paths.PLAYBOOKS / "library" / "host_doctor.py")


@pytest.mark.parametrize(
    ("cpuinfo", "flags"),
    [
        ("processor\t: 0\nflags\t\t: fpu vme sse2 vmx ept\n", {"vmx": True, "svm": False}),
        ("flags\t\t: fpu svm npt\nflags\t\t: fpu svm npt\n", {"vmx": False, "svm": True}),
        ("flags\t\t: fpu sse2 hypervisor\n", {"vmx": False, "svm": False}),  # the lab's TCG CPU
        ("", {"vmx": False, "svm": False}),
    ],
)
def test_cpu_flags(cpuinfo: str, flags: dict[str, bool]) -> None:
    assert host_doctor.parse_cpu_flags(cpuinfo) == flags


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\nGCC", "550.54.14"),
        ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs@U16)", "570.86.15"),
        ("", ""),
    ],
)  # fmt: skip
def test_driver_version_from_proc(text: str, version: str) -> None:
    assert host_doctor.parse_driver_version(text) == version


def test_nvidia_devices_on_the_bus_by_class() -> None:
    devices = [
        {"address": "0000:00:01.0", "vendor": "0x8086", "class": "0x030000", "device": "0x1234"},
        {"address": "0000:18:00.0", "vendor": "0x10de", "class": "0x030200", "device": "0x2335"},
        {"address": "0000:05:00.0", "vendor": "0x10de", "class": "0x068000", "device": "0x22a3"},
        {"address": "0000:19:00.1", "vendor": "0x10DE", "class": "0x040300", "device": "0x22ba"},
    ]
    kinds = [(d["address"], d["kind"]) for d in host_doctor.nvidia_pci_devices(devices)]
    assert kinds == [("0000:18:00.0", "gpu"), ("0000:05:00.0", "nvswitch"), ("0000:19:00.1", "other")]


def test_nvidia_smi_csv() -> None:
    text = "NVIDIA H200, 570.86.15, 143771 MiB\nNVIDIA H200, 570.86.15, 143771 MiB\n"
    assert (
        host_doctor.parse_nvidia_smi(text)
        == [{"name": "NVIDIA H200", "driver": "570.86.15", "memory": "143771 MiB"}] * 2
    )


@pytest.mark.parametrize(
    ("data", "state"), [(b"\x06\x00\x00\x00\x01", "enabled"), (b"\x06\x00\x00\x00\x00", "disabled"), (b"", "unknown")]
)
def test_secure_boot_efi_variable(data: bytes, state: str) -> None:
    assert host_doctor.parse_secure_boot_var(data) == state


@pytest.mark.parametrize(
    ("text", "state"),
    [("SecureBoot enabled\n", "enabled"), ("SecureBoot disabled\n", "disabled"),
     ("EFI variables are not supported on this system\n", "no UEFI"), ("", "unknown")],
)  # fmt: skip
def test_secure_boot_from_mokutil(text: str, state: str) -> None:
    assert host_doctor.parse_mokutil(text) == state


def test_docker_runtimes() -> None:
    text = (
        '{"io.containerd.runc.v2":{"path":"runc"},"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'
    )
    assert host_doctor.parse_runtimes(text) == ["io.containerd.runc.v2", "nvidia", "runc"]
    assert host_doctor.parse_runtimes("not json") == []


def inspected(env: list[str], labels: dict[str, str] | None = None) -> str:
    return json.dumps([{"Config": {"Env": env, "Labels": labels}}])


@pytest.mark.parametrize(
    ("text", "cuda"),
    [
        (inspected(["PATH=/usr/bin", "NVIDIA_REQUIRE_CUDA=cuda>=12.4 brand=tesla,driver>=470,driver<471",
                    "CUDA_VERSION=12.4.1"]), {"cuda": "12.4", "source": "NVIDIA_REQUIRE_CUDA"}),
        (inspected(["CUDA_VERSION=12.1.0"]), {"cuda": "12.1", "source": "CUDA_VERSION"}),
        (inspected([], {"com.nvidia.cuda.version": "12.8.1"}), {"cuda": "12.8", "source": "label"}),
        (inspected(["PATH=/usr/bin"]), {"cuda": "", "source": ""}),
        ("[]", {"cuda": "", "source": ""}),
    ],
)  # fmt: skip
def test_the_cuda_an_image_needs(text: str, cuda: dict[str, str]) -> None:
    assert host_doctor.image_cuda(text) == cuda


def disk(name: str, size: int, kind: str = "disk", **found: object) -> dict[str, object]:
    """One device as `lsblk --json --bytes -o NAME,TYPE,SIZE,FSTYPE,PTTYPE,MOUNTPOINT,RO` shows it."""
    return {"name": name, "type": kind, "size": size, "fstype": None, "pttype": None, "mountpoint": None, "ro": False,
            **found}  # fmt: skip


LSBLK = {
    "blockdevices": [
        disk("vda", 4 << 30, pttype="gpt", children=[disk("vda1", 4 << 30, "part", fstype="ext4", mountpoint="/")]),
        disk("vdb", 20 << 30),
        disk("vdc", 10 << 30, fstype="ext4"),
        disk("vdd", 10 << 30, fstype="ext4", mountpoint="/srv/models"),
        disk("vde", 1 << 30, fstype="swap"),
        disk("vdf", 1 << 30, fstype="swap", mountpoint="[SWAP]"),
        disk("sr0", 1 << 20, "rom", ro=True),
        disk("loop0", 1 << 20, "loop", fstype="squashfs"),
        disk("nvme1n1", 50 << 30, pttype="dos", children=[disk("nvme1n1p1", 50 << 30, "part", fstype="xfs")]),
    ]
}


def test_disks_nobody_mounted() -> None:
    idle = host_doctor.idle_disks(json.dumps(LSBLK))
    assert idle == [
        {"device": "/dev/vdb", "size": 20 << 30, "contents": "blank"},
        {"device": "/dev/vdc", "size": 10 << 30, "contents": "ext4"},
        {"device": "/dev/vde", "size": 1 << 30, "contents": "swap"},  # not in use: in use, lsblk says [SWAP]
        {"device": "/dev/nvme1n1", "size": 50 << 30, "contents": "dos, nvme1n1p1 xfs"},
    ]


def test_a_model_directory_not_made_yet_is_measured_where_it_would_be() -> None:
    existing = {"/", "/srv"}
    assert host_doctor.nearest_existing("/srv/models/qwen", exists=existing.__contains__) == "/srv"
    assert host_doctor.nearest_existing("/nope/x", exists=existing.__contains__) == "/"


def test_modules() -> None:
    text = "nvidia_uvm 1531904 0 - Live 0x0\nnvidia 56934400 19 nvidia_uvm, Live 0x0\nnouveau 2281472 0 - Live 0x0\n"
    assert host_doctor.parse_modules(text) == {"nvidia_uvm", "nvidia", "nouveau"}
