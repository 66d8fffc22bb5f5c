"""The nvidia role's probe: parsing what the kernel, NVML and firmware report, and the verdict, as tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from library_modules import load

probe = load(Path(__file__).parents[2] / "playbooks/roles/nvidia/library/nvidia_probe.py")

GPU = probe.PciDevice("0000:17:00.0", "0x10de", "0x2335", "0x030200")
SWITCH = probe.PciDevice("0000:a0:00.0", "0x10de", "0x22a3", "0x068000")
VIRTIO = probe.PciDevice("0000:00:04.0", "0x1af4", "0x1001", "0x010000")
PROC = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue Sep 23 09:57:42 UTC 2025\nGCC version: gcc 13\n"


def test_parse_proc_version() -> None:
    assert probe.parse_proc_version(PROC) == "580.95.05"
    assert probe.parse_proc_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.261.03  Release") == (
        "535.261.03"
    )
    assert probe.parse_proc_version("") == ""


@pytest.mark.parametrize(
    ("rc", "out", "expected"),
    [
        (0, "580.95.05, NVIDIA H200\n580.95.05, NVIDIA H200\n", ("580.95.05", ("NVIDIA H200", "NVIDIA H200"), False)),
        (18, "Failed to initialize NVML: Driver/library version mismatch\n", ("", (), True)),
        (9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", ("", (), False)),
    ],
)
def test_parse_smi(rc: int, out: str, expected: tuple) -> None:
    assert probe.parse_smi(rc, out) == expected


def test_secure_boot_sources() -> None:
    assert probe.parse_mokutil("SecureBoot enabled\n") is True
    assert probe.parse_mokutil("SecureBoot disabled\n") is False
    assert probe.parse_mokutil("EFI variables are not supported on this system\n") is False
    assert probe.parse_efivar(b"\x06\x00\x00\x00\x01") is True
    assert probe.parse_efivar(b"\x06\x00\x00\x00\x00") is False


def test_parse_installed_keeps_installed_packages_only() -> None:
    text = "installed nvidia-kernel-dkms 535.261.03-1~deb12u1\nnot-installed nvidia-smi \n"
    assert probe.parse_installed(text) == {"nvidia-kernel-dkms": "535.261.03-1~deb12u1"}


def _host(**kw: object) -> object:
    return probe.Host(kernel="6.1.0-56-amd64", **kw)


DRIVER_580 = probe.Driver(kernel_version="580.95.05", module_loaded=True, smi="/usr/local/nvidia/bin/nvidia-smi",
                          smi_version="580.95.05", smi_gpus=("NVIDIA H200",))  # fmt: skip


@pytest.mark.parametrize(
    ("host", "without_gpu", "action", "line"),
    [
        (_host(devices=[VIRTIO]), False, "none", "no NVIDIA device on the PCI bus"),
        (_host(devices=[VIRTIO]), True, "install", "no NVIDIA device on the PCI bus; installing the driver anyway"),
        (_host(devices=[GPU]), False, "install", "1 NVIDIA GPU(s) on the PCI bus, no working driver"),
        (_host(devices=[GPU, SWITCH]), False, "install", "1 NVIDIA GPU(s) and 1 NVSwitch(es) on the PCI bus"),
        # A container on a GPU host: no PCI entries, the driver mounted read-only from outside: left alone.
        (_host(driver=DRIVER_580), False, "none", "driver present (580.95.05, nvidia-smi sees 1 GPU(s) at /usr/local"),
        # Our own packages: kept at their pin.
        (_host(devices=[GPU], driver=DRIVER_580, installed_packages={"nvidia-open": "580.95.05-1"}), False, "install",
         "driver 580.95.05 present (1 NVIDIA GPU(s) on the PCI bus), from nvidia-open 580.95.05-1"),
    ],
)  # fmt: skip
def test_decide(host: object, without_gpu: bool, action: str, line: str) -> None:
    got_action, got_line = probe.decide(host, without_gpu)
    assert got_action == action
    assert got_line.startswith(line), got_line


@pytest.mark.parametrize(
    ("host", "reasons"),
    [
        (_host(devices=[GPU], modules=frozenset({"nouveau"})), ["nouveau is in memory"]),
        (_host(devices=[GPU], driver=probe.Driver(nvml_mismatch=True, installed_module_version="580.95.05")),
         ["NVML and the loaded kernel module differ (Driver/library version mismatch)",
          "the nvidia module 580.95.05 is installed for this GPU but not loaded"]),
        (_host(devices=[GPU], modules=frozenset({"nvidia"}),
               driver=probe.Driver(kernel_version="580.82.07", module_loaded=True,
                                   installed_module_version="580.95.05")),
         ["the loaded nvidia module is 580.82.07, the installed one 580.95.05"]),
        # No GPU: a module that does not load is no reason to reboot.
        (_host(devices=[VIRTIO], driver=probe.Driver(installed_module_version="535.261.03")), []),
        (_host(devices=[GPU], modules=frozenset({"nvidia"}), driver=DRIVER_580), []),
    ],
)  # fmt: skip
def test_reboot_reasons(host: object, reasons: list[str]) -> None:
    assert probe.reboot_reasons(host) == reasons


def test_pci_devices_reads_sysfs(tmp_path: Path) -> None:
    for dev, (vendor, cls) in {"0000:17:00.0": ("0x10de", "0x030200"), "0000:00:04.0": ("0x1af4", "0x010000")}.items():
        d = tmp_path / dev
        d.mkdir()
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text("0x2335\n")
        (d / "class").write_text(cls + "\n")
    found = probe.pci_devices(str(tmp_path))
    assert [probe.is_gpu(d) for d in found] == [False, True]
    assert probe.pci_devices(str(tmp_path / "missing")) == []
