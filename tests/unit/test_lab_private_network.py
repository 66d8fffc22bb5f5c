"""The lab's private segment as configured on the controller: each labN's address and MAC, the qemu arguments of
a cold boot (the NIC from the start) and of a resumed clone (plugged in later), and the inventory's host variable."""

import re
from pathlib import Path

import pytest

from provision.errors import UsageError
from provision.lab import hosts, inventory
from provision.lab.state import LabDirs, LabHostStatus, private_address


@pytest.fixture
def lab_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabDirs:
    monkeypatch.setenv("PROVISION_LAB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PROVISION_LAB_CACHE", str(tmp_path / "cache"))
    d = LabDirs(tmp_path / "state", tmp_path / "cache")
    (d.hosts / "lab12").mkdir(parents=True)
    (d.hosts / "lab12" / "ssh-port").write_text("2212\n")
    return d


def test_each_host_has_its_own_address() -> None:
    assert [private_address(name) for name in ("lab1", "lab2", "lab254")] == ["10.77.0.1", "10.77.0.2", "10.77.0.254"]
    with pytest.raises(UsageError, match=re.escape("lab255: the private segment has room for lab1..lab254")):
        private_address("lab255")


def test_a_cold_boot_has_the_nic_a_resumed_clone_gets_it_plugged(lab_dirs: LabDirs) -> None:
    lab_dirs.segment.write_text("2311\n")
    vm = hosts._vm(lab_dirs, "lab12", None)
    cold = vm.argv()
    at = cold.index("-netdev")
    assert cold[at : at + 4] == [
        "-netdev", "socket,id=private,mcast=239.77.0.1:2311,localaddr=127.0.0.1",
        "-device", "virtio-net-pci,id=private-nic,netdev=private,mac=52:54:00:77:00:0c",
    ]  # fmt: skip
    vm.incoming = lab_dirs.state / "state.bin"
    assert "-netdev" not in vm.argv()


def test_a_lab_started_before_the_segment_has_none(lab_dirs: LabDirs) -> None:
    host = LabHostStatus("lab12", 2212, None, True)
    assert "-netdev" not in hosts._vm(lab_dirs, "lab12", None).argv()
    assert "private_address" not in inventory._host_vars(lab_dirs, host)
    lab_dirs.segment.write_text("2311\n")
    assert inventory._host_vars(lab_dirs, host)["private_address"] == "10.77.0.12"
