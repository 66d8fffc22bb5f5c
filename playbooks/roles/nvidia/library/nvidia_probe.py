#!/usr/bin/python
"""Read-only probe of a host's NVIDIA state for the nvidia role, in one round trip.

gather() reads the host: the PCI bus (/sys/bus/pci/devices: vendor 0x10de, display-class devices are GPUs,
class 0x0680 bridges are NVSwitches), what the kernel reports (/proc/driver/nvidia/version, /proc/modules),
NVML through nvidia-smi (on PATH or in the usual places a driver is mounted outside the package manager, such
as /usr/local/nvidia/bin), the version of the nvidia module installed for the running kernel (modinfo), Secure
Boot (mokutil, else the SecureBoot EFI variable) and the reboot marker.  Everything after that (parsing, the
verdict, the one-line summary) is pure functions over plain data, unit-tested in tests/unit/test_nvidia_probe.py.
Nothing here writes anything.  Standard library and AnsibleModule only: it runs on the target.
"""

# Ansible modules put DOCUMENTATION and RETURN before the imports (ansible-doc reads them), hence E402.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_probe
short_description: Find NVIDIA devices and an existing driver, read-only
description:
  - Lists NVIDIA devices on the PCI bus (vendor 0x10de) as GPUs (display class) and NVSwitches (class 0x0680).
  - Recognises a working driver by what the kernel and NVML report, not by installed packages.
  - Reports Secure Boot, nouveau in memory, an NVML/driver mismatch and the running kernel. Writes nothing.
options:
  packages:
    description: The driver packages the role would install; a driver present without them is left alone.
    type: list
    elements: str
    default: []
  install_without_gpu:
    description: Plan an install on a host with no NVIDIA device.
    type: bool
    default: false
  kernel:
    description: The kernel whose installed nvidia module modinfo reads; "" for the running one.
    type: str
    default: ""
  nvidia_smi_paths:
    description: Where to look for nvidia-smi besides PATH (a driver mounted outside the package manager).
    type: list
    elements: str
    default: [/usr/bin/nvidia-smi, /usr/local/nvidia/bin/nvidia-smi, /opt/nvidia/bin/nvidia-smi]
  reboot_marker:
    description: The file a run that rebooted for the driver leaves, holding the boot id it rebooted from.
    type: path
    default: /var/lib/provision/nvidia-reboot
author: provision
"""

RETURN = r"""
gpus:
  description: NVIDIA GPUs on the PCI bus (address, device id, class, bound kernel driver).
  type: list
  elements: dict
nvswitches:
  description: NVIDIA NVSwitch bridges on the PCI bus (8-GPU SXM machines need nvidia-fabricmanager for them).
  type: list
  elements: dict
kernel:
  description: The running kernel's release (uname -r).
  type: str
driver:
  description: >-
    kernel_version (loaded module), module_loaded, installed_module_version (modinfo for the running kernel),
    smi (path to nvidia-smi or ""), smi_version, smi_gpus (names), nvml_mismatch, present.
  type: dict
nouveau_loaded:
  description: Whether nouveau is in memory.
  type: bool
secure_boot:
  description: Whether Secure Boot is enabled ("unknown" counts as not).
  type: bool
boot_id:
  description: This boot's id (/proc/sys/kernel/random/boot_id).
  type: str
rebooted_from:
  description: The boot id the reboot marker holds ("" when there is none).
  type: str
reboot_reasons:
  description: Why the driver needs a reboot to work (nouveau in memory, NVML mismatch, a module not loaded).
  type: list
  elements: str
installed_packages:
  description: Those of I(packages) that are installed, with their versions.
  type: dict
docker:
  description: Whether Docker's daemon is installed.
  type: bool
action:
  description: C(install) (install or keep up to date the driver packages) or C(none).
  type: str
summary:
  description: One line saying what was found.
  type: str
"""

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

from ansible.module_utils.basic import AnsibleModule

NVIDIA_VENDOR = "0x10de"
SWITCH_CLASS = "0x0680"  # bridge, other: how NVSwitch shows on the bus
EFI_SECURE_BOOT = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
MISMATCH = "Driver/library version mismatch"
# The module's file names: NVIDIA's, and Debian's (which renames the file, not the module: it loads as nvidia).
MODULE_FILES = ("nvidia", "nvidia-current")


@dataclass(frozen=True)
class PciDevice:
    address: str
    vendor: str
    device: str
    pci_class: str
    driver: str = ""


@dataclass(frozen=True)
class Driver:
    kernel_version: str = ""  # the loaded module's version, from /proc/driver/nvidia/version
    module_loaded: bool = False
    installed_module_version: str = ""  # modinfo's for the running kernel
    smi: str = ""
    smi_version: str = ""
    smi_gpus: tuple[str, ...] = ()
    nvml_mismatch: bool = False

    @property
    def present(self) -> bool:
        """A driver that works: the kernel has it loaded, or NVML answers."""
        return bool(self.kernel_version or self.smi_version)


@dataclass(frozen=True)
class Host:
    devices: list[PciDevice] = field(default_factory=list)
    modules: frozenset[str] = frozenset()
    driver: Driver = Driver()
    kernel: str = ""
    secure_boot: bool = False
    boot_id: str = ""
    rebooted_from: str = ""
    installed_packages: dict[str, str] = field(default_factory=dict)
    docker: bool = False


def is_nvidia(dev: PciDevice) -> bool:
    return dev.vendor.lower() == NVIDIA_VENDOR


def is_gpu(dev: PciDevice) -> bool:
    """Display controllers (VGA 0x0300, 3D 0x0302, and the rest of class 0x03)."""
    return is_nvidia(dev) and dev.pci_class.lower().startswith("0x03")


def is_switch(dev: PciDevice) -> bool:
    return is_nvidia(dev) and dev.pci_class.lower().startswith(SWITCH_CLASS)


def parse_proc_version(text: str) -> str:
    """'NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  Wed ...' -> '535.261.03'."""
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else ""


def parse_modules(text: str) -> frozenset[str]:
    return frozenset(line.split()[0] for line in text.splitlines() if line.strip())


def parse_smi(rc: int, out: str) -> tuple[str, tuple[str, ...], bool]:
    """nvidia-smi --query-gpu=driver_version,name --format=csv,noheader -> (version, GPU names, mismatch)."""
    if MISMATCH in out:
        return "", (), True
    if rc != 0:
        return "", (), False
    rows = [[cell.strip() for cell in line.split(",", 1)] for line in out.splitlines() if "," in line]
    version = rows[0][0] if rows else ""
    return version, tuple(row[1] for row in rows), False


def parse_mokutil(text: str) -> bool | None:
    if "SecureBoot enabled" in text:
        return True
    if "SecureBoot disabled" in text or "not supported" in text.lower():
        return False
    return None


def parse_efivar(data: bytes) -> bool:
    """The variable is 4 attribute bytes, then one byte: 1 when Secure Boot is on."""
    return len(data) >= 5 and data[4] == 1


def reboot_reasons(host: Host) -> list[str]:
    """Why the installed driver needs a reboot to work; never for a module that cannot load because there is
    no GPU to load it for."""
    drv, installed = host.driver, host.driver.installed_module_version
    reasons = []
    if "nouveau" in host.modules:
        reasons.append("nouveau is in memory")
    if drv.nvml_mismatch:
        reasons.append(f"NVML and the loaded kernel module differ ({MISMATCH})")
    elif drv.kernel_version and installed and drv.kernel_version != installed:
        reasons.append(f"the loaded nvidia module is {drv.kernel_version}, the installed one {installed}")
    if installed and not drv.module_loaded and any(is_gpu(d) for d in host.devices):
        reasons.append(f"the nvidia module {installed} is installed for this GPU but not loaded")
    return reasons


def decide(host: Host, install_without_gpu: bool) -> tuple[str, str]:
    """(action, one line): "none" for a host without an NVIDIA device or with a working driver that is not
    ours (preinstalled, mounted from outside, a runfile); "install" otherwise (our packages are kept pinned)."""
    gpus = [d for d in host.devices if is_gpu(d)]
    switches = [d for d in host.devices if is_switch(d)]
    drv = host.driver
    bus = f"{len(gpus)} NVIDIA GPU(s)" + (f" and {len(switches)} NVSwitch(es)" if switches else "") + " on the PCI bus"
    if drv.present and not host.installed_packages:
        seen = f", nvidia-smi sees {len(drv.smi_gpus)} GPU(s)" if drv.smi_version else ""
        where = f" at {drv.smi}" if drv.smi else ""
        return (
            "none",
            f"driver present ({drv.kernel_version or drv.smi_version}{seen}{where}; {bus}), nothing to install",
        )
    if not gpus and not switches and not drv.smi_gpus:
        if not install_without_gpu:
            return "none", "no NVIDIA device on the PCI bus"
        return "install", "no NVIDIA device on the PCI bus; installing the driver anyway (nvidia_install_without_gpu)"
    packages = ", ".join(f"{name} {version}" for name, version in sorted(host.installed_packages.items()))
    if drv.present:
        return "install", f"driver {drv.kernel_version or drv.smi_version} present ({bus}), from {packages}"
    if drv.nvml_mismatch:
        return "install", f"{bus}; NVML and the loaded driver differ ({MISMATCH})"
    return "install", f"{bus}, no working driver" + (f" (installed: {packages})" if packages else "")


def result(host: Host, install_without_gpu: bool = False) -> dict:
    drv = host.driver
    action, line = decide(host, install_without_gpu)
    return {
        "gpus": [asdict(d) for d in host.devices if is_gpu(d)],
        "nvswitches": [asdict(d) for d in host.devices if is_switch(d)],
        "kernel": host.kernel,
        "driver": {
            "kernel_version": drv.kernel_version,
            "module_loaded": drv.module_loaded,
            "installed_module_version": drv.installed_module_version,
            "smi": drv.smi,
            "smi_version": drv.smi_version,
            "smi_gpus": list(drv.smi_gpus),
            "nvml_mismatch": drv.nvml_mismatch,
            "present": drv.present,
        },
        "nouveau_loaded": "nouveau" in host.modules,
        "secure_boot": host.secure_boot,
        "boot_id": host.boot_id,
        "rebooted_from": host.rebooted_from,
        "reboot_reasons": reboot_reasons(host),
        "installed_packages": dict(host.installed_packages),
        "docker": host.docker,
        "action": action,
        "summary": line,
    }


# ---- I/O --------------------------------------------------------------------------------------------------


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return default


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout + proc.stderr


def pci_devices(root: str = "/sys/bus/pci/devices") -> list[PciDevice]:
    found = []
    for address in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        base = os.path.join(root, address)
        driver = os.path.join(base, "driver")
        found.append(
            PciDevice(
                address=address,
                vendor=_read(os.path.join(base, "vendor")).strip(),
                device=_read(os.path.join(base, "device")).strip(),
                pci_class=_read(os.path.join(base, "class")).strip(),
                driver=os.path.basename(os.readlink(driver)) if os.path.islink(driver) else "",
            )
        )
    return found


def secure_boot() -> bool:
    mokutil = shutil.which("mokutil")
    if mokutil:
        verdict = parse_mokutil(_run([mokutil, "--sb-state"])[1])
        if verdict is not None:
            return verdict
    try:
        with open(EFI_SECURE_BOOT, "rb") as f:
            return parse_efivar(f.read())
    except OSError:
        return False  # no EFI (BIOS boot, like the lab), or no efivarfs: no Secure Boot to satisfy


def parse_installed(text: str) -> dict[str, str]:
    """`dpkg-query -W -f '${db:Status-Status} ${Package} ${Version}\\n'` or `rpm -q --qf 'installed %{NAME}
    %{VERSION}-%{RELEASE}\\n'` output -> {name: version} of the installed ones."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "installed":
            found[parts[1]] = parts[2]
    return found


def installed_packages(names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    if shutil.which("dpkg-query"):
        return parse_installed(
            _run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Version}\\n", *names])[1]
        )
    if shutil.which("rpm"):
        return parse_installed(_run(["rpm", "-q", "--qf", "installed %{NAME} %{VERSION}-%{RELEASE}\\n", *names])[1])
    return {}


def gather(smi_paths: list[str], marker: str, packages: list[str], kernel: str = "") -> Host:
    modules = parse_modules(_read("/proc/modules"))
    smi = shutil.which("nvidia-smi") or next((p for p in smi_paths if os.access(p, os.X_OK)), "")
    smi_version, smi_gpus, mismatch = "", (), False
    if smi:
        smi_version, smi_gpus, mismatch = parse_smi(
            *_run([smi, "--query-gpu=driver_version,name", "--format=csv,noheader"])
        )
    modinfo = shutil.which("modinfo") or "/sbin/modinfo"
    installed = ""
    for name in MODULE_FILES:
        rc, out = _run([modinfo, *(["-k", kernel] if kernel else []), "-F", "version", name])
        if rc == 0 and out.strip():
            installed = out.strip()
            break
    driver = Driver(
        kernel_version=parse_proc_version(_read("/proc/driver/nvidia/version")),
        module_loaded="nvidia" in modules,
        installed_module_version=installed,
        smi=smi,
        smi_version=smi_version,
        smi_gpus=smi_gpus,
        nvml_mismatch=mismatch,
    )
    return Host(
        devices=pci_devices(),
        modules=modules,
        driver=driver,
        kernel=os.uname().release,
        secure_boot=secure_boot(),
        boot_id=_read("/proc/sys/kernel/random/boot_id").strip(),
        rebooted_from=_read(marker).strip(),
        installed_packages=installed_packages(packages),
        docker=bool(shutil.which("dockerd") or os.path.exists("/usr/bin/dockerd")),
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "default": []},
            "install_without_gpu": {"type": "bool", "default": False},
            "kernel": {"type": "str", "default": ""},
            "nvidia_smi_paths": {
                "type": "list",
                "elements": "str",
                "default": ["/usr/bin/nvidia-smi", "/usr/local/nvidia/bin/nvidia-smi", "/opt/nvidia/bin/nvidia-smi"],
            },
            "reboot_marker": {"type": "path", "default": "/var/lib/provision/nvidia-reboot"},
        },
        supports_check_mode=True,
    )
    params = module.params
    host = gather(params["nvidia_smi_paths"], params["reboot_marker"], params["packages"], params["kernel"])
    module.exit_json(changed=False, **result(host, params["install_without_gpu"]))


if __name__ == "__main__":
    main()
