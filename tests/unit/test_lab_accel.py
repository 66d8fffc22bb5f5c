"""The lab's choice between KVM and TCG: a /dev/kvm without hardware virtualization under it is not probed; the
kernel command line that goes with each."""

from pathlib import Path

import pytest

from provision.lab import template
from provision.lab.image import BaseImage
from provision.lab.state import LabDirs

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr vmx sse sse2 ssse3\n"
AMD = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr svm lm sse sse2\n"
NONE = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 hypervisor\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [(INTEL, True), (AMD, True), (NONE, False)])
def test_hardware_virtualization_is_read_from_the_cpu_flags(tmp_path: Path, cpuinfo: str, expected: bool) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo * 2)
    assert template._hardware_virtualization(tmp_path / "cpuinfo") is expected


def test_a_kvm_device_without_hardware_virtualization_gives_tcg_without_a_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISION_LAB_ACCEL", raising=False)
    monkeypatch.setattr(template.os, "access", lambda path, mode: True)  # /dev/kvm there and usable
    monkeypatch.setattr(template, "_hardware_virtualization", lambda: False)

    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("a KVM probe VM was started")

    monkeypatch.setattr(template, "Vm", no_probe)
    lines: list[str] = []
    verdict = template._accel(LabDirs(tmp_path / "state", tmp_path / "cache"), BaseImage(tmp_path), lines.append)
    assert verdict == "tcg"
    assert lines == ["KVM: this CPU offers no hardware virtualization (no vmx or svm flag); using TCG emulation"]
    assert not (tmp_path / "cache").exists()  # nothing cached: the flags are read again each time, cheaply


def test_speculation_defences_are_off_under_tcg_only_and_a_flavor_adds_its_arguments_last() -> None:
    tcg = template.kernel_args("tcg", "security=selinux selinux=1").split()
    assert tcg[: len(template.APPEND.split())] == template.APPEND.split()
    assert tcg[-3:] == ["mitigations=off", "security=selinux", "selinux=1"]
    assert template.kernel_args("kvm") == template.APPEND  # under KVM the guest's defences are real: kept
