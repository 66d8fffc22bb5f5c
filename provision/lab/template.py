"""The saved, already-booted VM that lab hosts resume from instead of booting, and the acceleration (KVM or
TCG) it is made for; both are cached and made again only when the image or the VM's settings change."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict
from functools import cache
from pathlib import Path

from provision.errors import EnvironmentProblem
from provision.lab.image import BaseImage, building
from provision.lab.qemu import QEMU, Vm, VmSpec, create_blank, create_overlay, guest_exec, qmp
from provision.lab.state import LabDirs, Log

APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=1 systemd.show_status=0"
# Added under TCG: the guest kernel's defences against speculative-execution attacks (retpolines, the return stack
# refilled at each task switch, barriers in copies from user memory) guard nothing there, since no guest
# instruction runs on the host's CPU as itself (the host keeps its own defences), and they cost the emulated guest
# CPU (s38, two VMs side by side: 300 fork/execs 1.9-2.0 s without them, 2.2-2.4 s with; three python3 starts
# with imports 2.1-2.2 s against 2.4-2.5; a converged run's the same). Under KVM they do their job and stay on.
TCG_APPEND = "mitigations=off"
DATA_DISK_SIZE = "20G"
# A cold boot under TCG takes 1-2 min alone; on a machine busy with other guests and builds, one took more than 5
# (the SELinux template beside the test suite's lanes and a DKMS compile, s31). Waiting longer costs only a hang.
BOOT_TIMEOUT = 900.0


def kernel_args(accel: str, extra: str = "") -> str:
    """The kernel command line of a lab VM: APPEND, TCG_APPEND under TCG, then a flavor's `extra`."""
    return " ".join(filter(None, [APPEND, TCG_APPEND if accel == "tcg" else "", extra]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@cache  # the accel verdict's key and the template's both name it: one `qemu --version` per process
def _qemu_version() -> str:
    return subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _accel(d: LabDirs, image: BaseImage, log: Log) -> str:
    """KVM only when it really boots a guest here; the verdict is cached.  Override: PROVISION_LAB_ACCEL."""
    forced = os.environ.get("PROVISION_LAB_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    if not _hardware_virtualization():
        # A /dev/kvm without VT-x or AMD-V under it (a software module, as on the test machines) boots a guest far
        # slower than TCG: the probe below would spend its whole 90 s and a core and a half finding that out
        # (s36: 131 CPU-s of the suite's first `lab up` on an empty cache).
        log("KVM: this CPU offers no hardware virtualization (no vmx or svm flag); using TCG emulation")
        return "tcg"
    key = hashlib.sha256(f"{_qemu_version()} {os.uname().release} {image.directory.name}".encode()).hexdigest()[:16]
    verdict_file = d.cache / "accel" / key
    if verdict_file.exists():
        return verdict_file.read_text().strip()
    log("checking whether KVM boots a guest on this machine (once)")
    verdict = "tcg"
    with tempfile.TemporaryDirectory(prefix="kvm-probe-", dir=d.cache) as tmp:
        spec = VmSpec(image.kernel, image.initrd, kernel_args("kvm"), accel="kvm")
        vm = Vm("kvm-probe", Path(tmp), spec, _free_port(), Path(tmp) / "disk.qcow2", None)
        create_overlay(vm.disk, image.disk)
        try:
            vm.start()
            with vm.wait_for_agent(90.0) as agent:
                if guest_exec(agent, ["/bin/true"]).rc == 0:
                    verdict = "kvm"
        except EnvironmentProblem:
            pass
        finally:
            vm.stop(timeout=5)
    log(f"KVM {'works' if verdict == 'kvm' else 'does not boot guests here; using TCG emulation'}")
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    verdict_file.write_text(verdict + "\n")
    return verdict


def _hardware_virtualization(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has VT-x or AMD-V, which KVM needs to run guests at native speed."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return True  # unknown: let the probe decide
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return bool(flags & {"vmx", "svm"})


def _ensure_template(d: LabDirs, image: BaseImage, spec: VmSpec, log: Log) -> Path:
    """A booted VM saved to disk: clones resume from it in seconds instead of booting for half a minute."""
    identity = {
        "image": image.directory.name,
        "spec": {**asdict(spec), "kernel": "", "initrd": ""},
        # A saved state loads only into the qemu that saved it ("pc" names another machine version in another).
        "qemu": _qemu_version(),
        "version": 1,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    template = d.cache / "templates" / key
    if (template / "state.bin").exists():
        return template
    with building(template):  # one boot at a time (`lab prepare` beside a `lab up`); a second finds it made
        if not (template / "state.bin").exists():
            _boot_template(template, image, spec, identity, log)
    return template


def _boot_template(template: Path, image: BaseImage, spec: VmSpec, identity: dict, log: Log) -> None:
    log("booting the lab template VM once (its saved state makes later starts fast)")
    template.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="build-", dir=template.parent) as tmp:
        work = Path(tmp)
        vm = Vm("lab-template", work, spec, _free_port(), work / "disk.qcow2", work / "data.qcow2", "lab-data")
        create_overlay(vm.disk, image.disk)
        create_blank(vm.data_disk, DATA_DISK_SIZE)  # type: ignore[arg-type]
        vm.start()
        try:
            with vm.wait_for_agent(BOOT_TIMEOUT) as agent:
                booted = guest_exec(agent, ["/bin/systemctl", "is-system-running", "--wait"], timeout=BOOT_TIMEOUT)
                if booted.stdout.strip() not in ("running", "degraded"):
                    raise EnvironmentProblem(f"lab template did not finish booting: {booted.stdout.strip()}")
                # Less memory in the saved state means faster resumes.
                guest_exec(agent, ["/bin/sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
            state = work / "state.bin"
            with qmp(vm.qmp_path, timeout=BOOT_TIMEOUT) as monitor:
                monitor.call("stop")
                monitor.call("migrate", uri=f"exec:cat > {state}")
                while True:
                    info = monitor.call("query-migrate")
                    assert isinstance(info, dict)
                    if info.get("status") == "completed":
                        break
                    if info.get("status") in ("failed", "cancelled"):
                        raise EnvironmentProblem(f"saving the lab template failed: {info}")
                    time.sleep(0.2)
        finally:
            vm.stop()
        final = work / "template"
        final.mkdir()
        (work / "disk.qcow2").rename(final / "disk.qcow2")
        state.rename(final / "state.bin")
        (final / "disk.qcow2").chmod(0o444)  # frozen: the backing file of every clone
        (final / "identity.json").write_text(json.dumps(identity, indent=2, sort_keys=True))
        final.rename(template)
    log(f"lab template ready ({time.monotonic() - started:.0f}s)")
