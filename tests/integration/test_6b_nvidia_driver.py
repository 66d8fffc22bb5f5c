"""The nvidia role's install path for real, on a lab VM of the "nvidia" flavor (no GPU).

The flavor is built by running the role itself in the image's root with Ansible's chroot connection
(provision/lab/image.py: nvidia_install_without_gpu, Debian 12's own driver from non-free at a pinned version,
proprietary modules, holds): the DKMS module is compiled there at native speed, for the image's kernel, which is
the one the VM boots.  This module proves the result on the VM (the module modinfo reports, the holds, nouveau
blacklisted in the rebuilt initramfs, checked as a file: the lab boots the image's kernel and initrd from the
host), then runs the role there again with the same settings and the lab's package mirror, with nouveau loaded
by hand so that the driver needs a reboot: the role reboots once, the VM comes back without nouveau, the second
run changes nothing.  Then the two other reboot outcomes, without rebooting: nvidia_reboot false leaves the
reason in /run/provision/reboot-required, which `provision test` reports; and a host that was rebooted for the
driver already and still needs it fails instead of rebooting again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from labtools import BASE_PORT, Lab, recap

from provision.lab import aptcache, image

pytestmark = pytest.mark.usefixtures("session_hosts_paused")

PIN = dict(image.NVIDIA_VARS)["nvidia_driver_version"]
# A name of its own (labtools lists them all): the two lanes of scripts/test.sh start VMs on the same lab.
NAME = "lab6"


@dataclass(frozen=True)
class NvidiaHost:
    lab: Lab
    name: str
    inventory: Path
    extra: Path  # the flavor's role settings, with the lab's mirror: passed as -e @file

    def sh(self, command: str) -> str:
        return self.lab.sh(self.name, command)

    def up(self, *args: str) -> object:
        return self.lab.provision("up", "-i", str(self.inventory), "--tags", "nvidia", "-e", f"@{self.extra}", *args)


@pytest.fixture(scope="module")
def host(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NvidiaHost]:
    work = tmp_path_factory.mktemp("nvidia")
    lab.provision(
        "lab", "up", "--name", NAME, "--flavor", "nvidia", "--base-port", str(BASE_PORT),
        "--inventory-out", str(work / "lab-hosts.yml"), check=True,
    )  # fmt: skip
    name = NAME
    hosts = yaml.safe_load((work / "lab-hosts.yml").read_text())
    group = hosts["all"]["children"]["lab"]
    assert group["hosts"][name]["lab_flavor"] == "nvidia"
    group["hosts"] = {name: group["hosts"][name]}
    inventory = work / "inventory" / "hosts.yml"
    inventory.parent.mkdir()
    inventory.write_text(yaml.safe_dump(hosts))
    extra = work / "nvidia.yml"
    settings = {
        **dict(image.NVIDIA_VARS),
        "nvidia_debian_mirror": f"{aptcache.GUEST_URL}/deb.debian.org/debian",
        "nvidia_debian_security_mirror": f"{aptcache.GUEST_URL}/deb.debian.org/debian-security",
    }
    extra.write_text(yaml.safe_dump(settings))
    yield NvidiaHost(lab, name, inventory, extra)
    lab.pause(name)


def test_the_flavor_has_the_pinned_dkms_module_holds_and_nouveau_blacklisted(host: NvidiaHost) -> None:
    kernel = host.sh("uname -r").strip()
    # Debian renames the module's file to nvidia-current.ko (it still loads as nvidia, through an install rule).
    assert host.sh("/sbin/modinfo -F version nvidia-current").strip() == PIN, "no DKMS module for the kernel"
    assert f"nvidia-current/{PIN}, {kernel}, x86_64: installed" in host.sh("sudo dkms status")
    held = host.sh("apt-mark showhold").split()
    assert {"nvidia-kernel-dkms", "nvidia-smi", f"linux-image-{kernel}", f"linux-headers-{kernel}"} <= set(held), held
    assert "blacklist nouveau" in host.sh("cat /etc/modprobe.d/provision-blacklist-nouveau.conf")
    # The initramfs the lab boots (taken from the image) carries the blacklist.
    assert "provision-blacklist-nouveau.conf" in host.sh(f"sudo lsinitramfs /boot/initrd.img-{kernel}")
    # Headers for the kernel from the lab's mirror: if the archive dropped them, the image must be rebuilt.
    policy = host.sh(f"apt-cache policy linux-headers-{kernel}")
    assert re.search(r"Candidate:\s+[0-9]", policy), f"no linux-headers-{kernel}: rebuild the lab image\n{policy}"


@pytest.fixture(scope="module")
def rebooted(host: NvidiaHost) -> tuple:
    boot_before = host.sh("cat /proc/sys/kernel/random/boot_id").strip()
    host.sh("sudo modprobe nouveau && grep -q '^nouveau ' /proc/modules")
    first = host.up()
    second = host.up()
    check = host.up("--check", "--diff")
    return boot_before, first, second, check


def test_the_role_reboots_once_for_nouveau_in_memory(host: NvidiaHost, rebooted: tuple) -> None:
    boot_before, first, _, _ = rebooted
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(rf"changed\s+{host.name}\s+nvidia : Reboot \(nouveau is in memory\)", first.stdout), first.stdout
    assert host.sh("cat /proc/sys/kernel/random/boot_id").strip() != boot_before
    assert "nouveau" not in host.sh("cat /proc/modules")
    assert host.sh("test -e /var/lib/provision/nvidia-reboot && echo marker || echo none").strip() == "none"
    # The non-free sources now come through the lab's mirror.
    assert "10.0.2.2:3142" in host.sh("cat /etc/apt/sources.list.d/provision-nvidia-debian.sources")
    assert host.sh("/sbin/modinfo -F version nvidia-current").strip() == PIN


def test_the_second_run_and_check_mode_change_nothing(host: NvidiaHost, rebooted: tuple) -> None:
    _, _, second, check = rebooted
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout)[host.name]["changed"] == 0, second.stdout
    assert check.returncode == 0 and recap(check.stdout)[host.name]["changed"] == 0, check.stdout
    assert "Reboot" not in "".join(line for line in second.stdout.splitlines() if line.startswith("  changed"))


def test_without_reboots_the_reason_is_left_for_provision_test(host: NvidiaHost, rebooted: tuple) -> None:
    host.sh("sudo modprobe nouveau")
    try:
        proc = host.up("-e", "nvidia_reboot=false")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert host.sh("cat /run/provision/reboot-required").strip() == "nvidia: nouveau is in memory"
        smoke = host.lab.provision("test", "-i", str(host.inventory), "-k", "reboot")
        assert smoke.returncode == 1, smoke.stdout
        assert "a reboot is pending (/run/provision/reboot-required): nvidia: nouveau is in memory" in smoke.stdout
    finally:
        host.sh("sudo modprobe -r nouveau; sudo rm -f /run/provision/reboot-required")


def test_a_host_rebooted_once_already_is_not_rebooted_again(host: NvidiaHost, rebooted: tuple) -> None:
    boot = host.sh("cat /proc/sys/kernel/random/boot_id").strip()
    host.sh(
        "sudo mkdir -p /var/lib/provision && echo 00000000-0000-0000-0000-000000000000"
        " | sudo tee /var/lib/provision/nvidia-reboot && sudo modprobe nouveau"
    )
    try:
        proc = host.up()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"{host.name} was rebooted once for the nvidia driver already and it still cannot work" in proc.stdout
        assert "nouveau is in memory. Not rebooting again" in proc.stdout
        assert host.sh("cat /proc/sys/kernel/random/boot_id").strip() == boot
    finally:
        host.sh("sudo modprobe -r nouveau; sudo rm -f /var/lib/provision/nvidia-reboot")
