#!/usr/bin/python
"""Read-only readings of everything that decides whether a host can serve a model on its GPUs, in one call.

gather() reads the host (DMI, /proc, sysfs, NVML through ctypes or nvidia-smi, docker, lsblk, statvfs); the
parse_* functions turn what it read into plain data and are unit-tested in tests/unit/test_host_doctor.py. What
the readings mean (which cloud, which CUDA a driver supports, what blocks serving) is decided on the controller,
in provision/doctor.py. Nothing here writes anything: it runs in check mode too. Standard library and
AnsibleModule only: it runs on the target, on any python3 an inventory host has.
"""

# Ansible modules put DOCUMENTATION and RETURN before the imports (ansible-doc reads them), hence E402.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_doctor
short_description: Read, changing nothing, what decides whether a host can serve a model on its GPUs
description:
  - Reads DMI (cloud), CPU virtualisation flags, NVIDIA devices on the PCI bus, the NVIDIA driver (its version,
    the GPUs it sees and the highest CUDA it supports, through NVML or nvidia-smi), reboot-pending markers,
    Secure Boot, nouveau, docker and its runtimes, SELinux, data disks nobody mounted and free space under the
    model directory; and, when the inference image is on the host, the CUDA it needs.
  - Tries a short TCP connection from the host to each configured upstream (relay upstreams, egress
    destinations) and reads the route to it, so the controller can say which answer directly and which need a
    way out.
  - Writes nothing; supports check mode. `provision doctor` runs it and decides what the readings mean.
options:
  model_dir:
    description: Directory that holds (or will hold) the model weights; its free space is reported.
    type: str
    default: ""
  image:
    description: Inference image whose CUDA requirement is read, if it is on the host ("" for none).
    type: str
    default: ""
  upstreams:
    description: Upstreams to try a TCP connection to, each a mapping with host, port and label.
    type: list
    elements: dict
    default: []
  upstream_timeout:
    description: Seconds each connection attempt may take (at most two addresses per upstream are tried).
    type: float
    default: 3
author: provision
"""

RETURN = r"""
readings:
  description: One mapping per concern (cloud, cpu, pci, driver, reboot, secure_boot, nouveau, docker, selinux,
    disks, model_dir, image, os, upstreams). See provision/doctor.py for what the controller makes of them.
  type: dict
  returned: always
"""

import ctypes
import ctypes.util
import glob
import json
import os
import platform
import re
import socket

from ansible.module_utils.basic import AnsibleModule

NVIDIA_VENDOR = "0x10de"
# PCI class codes (the first two bytes of sysfs' 0xCCSSPP): 0x03 display controllers (GPUs; 3D controllers are
# 0x0302), 0x0680 "other bridge", which is what an NVSwitch reports.
DISPLAY_CLASS = "0x03"
NVSWITCH_CLASS = "0x0680"
EFI_SECURE_BOOT = "SecureBoot-8be4df61-93ca-11d2-aa0d-e39d1e2e3f8c"
# Where a reboot is asked for: Debian/Ubuntu's marker (update-notifier, unattended-upgrades), and provision's own
# (the nvidia role writes it when it leaves a reboot pending; its content says why).
REBOOT_MARKERS = ("/run/reboot-required", "/var/run/reboot-required", "/run/provision/reboot-required")
# Besides the loader's own search (ldconfig's cache): where drivers mounted into a machine keep NVML.
NVML_PLACES = (
    "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
    "/usr/local/nvidia/lib/libnvidia-ml.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "/usr/lib64/libnvidia-ml.so.1",
    "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1",
)
NVIDIA_BIN_DIRS = ["/usr/local/nvidia/bin", "/usr/bin", "/usr/sbin"]
NVML_SUCCESS = 0
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERRORS = {
    1: "NVML was not initialized",
    2: "invalid argument",
    3: "not supported",
    4: "no permission",
    6: "not found",
    9: "the NVIDIA kernel module is not loaded",
    12: "NVML's library was not found",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "NVML and the loaded driver are different versions (reboot pending)",
    999: "unknown error",
}
NOT_DATA_DISKS = re.compile(r"^(loop|ram|zram|sr|fd|md|dm-|nbd|mtdblock)")

# ---- parsing (pure) ------------------------------------------------------------------------------------


def parse_cpu_flags(cpuinfo: str) -> dict[str, bool]:
    """Whether /proc/cpuinfo's flags include vmx (Intel VT-x) and svm (AMD-V), on any CPU."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags.update(value.split())
    return {"vmx": "vmx" in flags, "svm": "svm" in flags}


def parse_modules(text: str) -> set[str]:
    """Names of the loaded kernel modules in /proc/modules."""
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def parse_driver_version(text: str) -> str:
    """The version in /proc/driver/nvidia/version ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14 ..."
    or "... Open Kernel Module for x86_64  570.86.15 ..."), or ""."""
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else ""


def nvidia_pci_devices(devices: list[dict[str, str]]) -> list[dict[str, str]]:
    """The NVIDIA devices among sysfs PCI readings ({address, vendor, class, device}), each with its kind."""
    found = []
    for dev in devices:
        if dev.get("vendor", "").lower() != NVIDIA_VENDOR:
            continue
        cls = dev.get("class", "").lower()
        kind = "gpu" if cls.startswith(DISPLAY_CLASS) else "nvswitch" if cls.startswith(NVSWITCH_CLASS) else "other"
        found.append({"address": dev.get("address", ""), "device": dev.get("device", ""), "class": cls, "kind": kind})
    return found


def parse_nvidia_smi(text: str) -> list[dict[str, str]]:
    """`nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader` lines."""
    gpus = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) >= 2 and fields[0]:
            gpus.append({"name": fields[0], "driver": fields[1], "memory": fields[2] if len(fields) > 2 else ""})
    return gpus


def parse_secure_boot_var(data: bytes) -> str:
    """The SecureBoot EFI variable as efivarfs shows it: 4 bytes of attributes, then 1 (on) or 0 (off)."""
    if len(data) < 5:
        return "unknown"
    return "enabled" if data[4] == 1 else "disabled"


def parse_mokutil(text: str) -> str:
    """`mokutil --sb-state`: "SecureBoot enabled" / "SecureBoot disabled" / "EFI variables are not supported"."""
    lowered = text.lower()
    if "secureboot enabled" in lowered:
        return "enabled"
    if "secureboot disabled" in lowered:
        return "disabled"
    if "not supported" in lowered:
        return "no UEFI"
    return "unknown"


def parse_runtimes(text: str) -> list[str]:
    """`docker info --format '{{json .Runtimes}}'`: a mapping of runtime name to its settings."""
    try:
        runtimes = json.loads(text or "{}")
    except ValueError:
        return []
    return sorted(runtimes) if isinstance(runtimes, dict) else []


def image_cuda(inspected: str) -> dict[str, str]:
    """The CUDA an image needs, from `docker image inspect`: NVIDIA_REQUIRE_CUDA ("cuda>=12.4 brand=..."), else
    CUDA_VERSION (12.4.1), else the label com.nvidia.cuda.version; {"cuda": "", ...} when it names none."""
    try:
        image = (json.loads(inspected) or [{}])[0]
    except (ValueError, IndexError, TypeError):
        return {"cuda": "", "source": ""}
    config = image.get("Config") or {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    labels = config.get("Labels") or {}
    required = re.search(r"cuda>=(\d+\.\d+)", env.get("NVIDIA_REQUIRE_CUDA", ""))
    if required:
        return {"cuda": required.group(1), "source": "NVIDIA_REQUIRE_CUDA"}
    for source, value in (
        ("CUDA_VERSION", env.get("CUDA_VERSION", "")),
        ("label", labels.get("com.nvidia.cuda.version", "")),
    ):
        match = re.match(r"(\d+\.\d+)", value or "")
        if match:
            return {"cuda": match.group(1), "source": source}
    return {"cuda": "", "source": ""}


def idle_disks(lsblk: str) -> list[dict[str, object]]:
    """Whole disks in `lsblk --json --bytes -o NAME,TYPE,SIZE,FSTYPE,PTTYPE,MOUNTPOINT,RO` that nothing on them is
    mounted from (active swap shows as [SWAP]): "blank" when lsblk sees no filesystem, partition table or
    partition on it, else what it holds. lsblk reads udev's records, not the disk: a report, not the disks role's
    proof of blank."""
    try:
        devices = json.loads(lsblk or "{}").get("blockdevices") or []
    except (ValueError, AttributeError):
        return []

    def used(dev: dict) -> bool:
        return bool(dev.get("mountpoint")) or any(used(child) for child in dev.get("children") or [])

    idle = []
    for dev in devices:
        name = str(dev.get("name", ""))
        if dev.get("type") != "disk" or NOT_DATA_DISKS.match(name) or str(dev.get("ro")) in ("1", "True", "true"):
            continue
        if used(dev):
            continue
        children = dev.get("children") or []
        held = [str(dev.get("fstype") or ""), str(dev.get("pttype") or "")]
        contents = ", ".join(
            [item for item in held if item and item != "None"]
            + [f"{child.get('name')} {child.get('fstype') or child.get('type')}" for child in children]
        )
        idle.append({"device": f"/dev/{name}", "size": int(dev.get("size") or 0), "contents": contents or "blank"})
    return idle


def nearest_existing(path: str, exists=os.path.exists) -> str:
    """The path itself, or its closest ancestor that exists (a model directory not yet made)."""
    path = os.path.normpath(path) if path else "/"
    while not exists(path) and path != "/":
        path = os.path.dirname(path)
    return path


# ---- reading the host ----------------------------------------------------------------------------------


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return default


def read_pci(root: str = "/sys/bus/pci/devices") -> dict[str, object]:
    try:
        addresses = sorted(os.listdir(root))
    except OSError:
        addresses = []
    devices = [
        {
            "address": address,
            "vendor": _read(f"{root}/{address}/vendor"),
            "class": _read(f"{root}/{address}/class"),
            "device": _read(f"{root}/{address}/device"),
        }
        for address in addresses
    ]
    return {"visible": bool(addresses), "nvidia": nvidia_pci_devices(devices)}


def _nvml_library() -> tuple[ctypes.CDLL | None, str]:
    """NVML from the loader's search path, ldconfig's cache, or where mounted drivers keep it."""
    candidates = ["libnvidia-ml.so.1", ctypes.util.find_library("nvidia-ml") or "", *NVML_PLACES]
    for candidate in filter(None, candidates):
        try:
            return ctypes.CDLL(candidate), candidate
        except OSError:
            continue
    return None, ""


def read_nvml() -> dict[str, object]:
    """The driver as NVML sees it: its version, the CUDA it supports, the GPUs. Loads NVML, changes nothing."""
    nvml, path = _nvml_library()
    if nvml is None:
        return {"loaded": False}
    result: dict[str, object] = {"loaded": True, "library": path}
    rc = nvml.nvmlInit_v2()
    result["init"] = rc
    if rc != NVML_SUCCESS:
        result["error"] = NVML_ERRORS.get(rc, f"NVML error {rc}")
        return result
    try:
        version = ctypes.create_string_buffer(96)
        if nvml.nvmlSystemGetDriverVersion(version, 96) == NVML_SUCCESS:
            result["driver"] = version.value.decode(errors="replace")
        cuda = ctypes.c_int()
        if nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(cuda)) == NVML_SUCCESS:
            result["cuda"] = f"{cuda.value // 1000}.{cuda.value % 1000 // 10}"
        count = ctypes.c_uint()
        rc = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
        names = []
        if rc == NVML_SUCCESS:
            for index in range(count.value):
                handle = ctypes.c_void_p()
                name = ctypes.create_string_buffer(96)
                if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != NVML_SUCCESS:
                    continue
                if nvml.nvmlDeviceGetName(handle, name, 96) == NVML_SUCCESS:
                    names.append(name.value.decode(errors="replace"))
            result["count"] = count.value
        else:
            result["error"] = NVML_ERRORS.get(rc, f"NVML error {rc}")
        result["gpus"] = names
    finally:
        nvml.nvmlShutdown()
    return result


def read_driver(module: AnsibleModule, modules: set[str]) -> dict[str, object]:
    driver: dict[str, object] = {
        "module_loaded": "nvidia" in modules,
        "proc_version": parse_driver_version(_read("/proc/driver/nvidia/version")),
        "proc_gpus": len(glob.glob("/proc/driver/nvidia/gpus/*")),
        "device_nodes": sorted(os.path.basename(p) for p in glob.glob("/dev/nvidia[0-9]*")),
    }
    try:
        nvml = read_nvml()
    except (OSError, AttributeError) as exc:  # a library without the _v2 calls, or one that fails to load
        nvml = {"loaded": False, "error": str(exc)}
    driver["nvml"] = nvml
    smi = module.get_bin_path("nvidia-smi", opt_dirs=NVIDIA_BIN_DIRS)
    driver["nvidia_smi"] = smi or ""
    if smi and not nvml.get("loaded"):
        query = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        rc, out, err = module.run_command(query)
        driver["smi"] = {"rc": rc, "gpus": parse_nvidia_smi(out) if rc == 0 else [], "error": err.strip()[-300:]}
    return driver


def read_secure_boot(module: AnsibleModule) -> str:
    if not os.path.isdir("/sys/firmware/efi"):
        return "no UEFI"
    try:
        with open(f"/sys/firmware/efi/efivars/{EFI_SECURE_BOOT}", "rb") as handle:
            return parse_secure_boot_var(handle.read())
    except OSError:
        pass
    mokutil = module.get_bin_path("mokutil")
    if mokutil:
        _, out, err = module.run_command([mokutil, "--sb-state"])
        return parse_mokutil(out + err)
    return "unknown"


def read_selinux(module: AnsibleModule) -> str:
    enforce = _read("/sys/fs/selinux/enforce")
    if enforce:
        return "enforcing" if enforce == "1" else "permissive"
    if os.path.isdir("/sys/fs/selinux") or os.path.exists("/etc/selinux/config"):
        return "disabled"
    return "absent"


def read_docker(module: AnsibleModule, image: str) -> tuple[dict[str, object], dict[str, object]]:
    docker = module.get_bin_path("docker")
    if not docker:
        return {"present": False}, {"name": image, "present": False}
    rc, out, err = module.run_command([docker, "info", "--format", "{{json .Runtimes}}"])
    reading: dict[str, object] = {
        "present": True,
        "answers": rc == 0,
        "runtimes": parse_runtimes(out) if rc == 0 else [],
    }
    if rc != 0:
        reading["error"] = (err.strip().splitlines() or [f"rc={rc}"])[-1][:300]
    found: dict[str, object] = {"name": image, "present": False}
    if image and rc == 0:
        rc, out, _ = module.run_command([docker, "image", "inspect", image])
        if rc == 0:
            found = {"name": image, "present": True, **image_cuda(out)}
    return reading, found


def read_disks(module: AnsibleModule) -> list[dict[str, object]] | None:
    lsblk = module.get_bin_path("lsblk")
    if not lsblk:
        return None
    rc, out, _ = module.run_command([lsblk, "--json", "--bytes", "-o", "NAME,TYPE,SIZE,FSTYPE,PTTYPE,MOUNTPOINT,RO"])
    if rc != 0:
        return None
    return idle_disks(out)


def read_model_dir(path: str) -> dict[str, object]:
    if not path:
        return {"path": ""}
    where = nearest_existing(path)
    try:
        stat = os.statvfs(where)
    except OSError as exc:
        return {"path": path, "exists": False, "error": exc.strerror}
    return {
        "path": path,
        "exists": where == os.path.normpath(path),
        "measured_at": where,
        "free": stat.f_bavail * stat.f_frsize,
        "size": stat.f_blocks * stat.f_frsize,
    }


def probe_upstream(module: AnsibleModule, host: str, port: int, timeout: float) -> dict[str, object]:
    """Resolve the upstream on the host, try a TCP connection to (at most) its first two addresses, and read the
    route to the address tried last (`ip route get`): whether it answers, and whether through a tunnel."""
    reading: dict[str, object] = {"host": host, "port": port, "answers": False, "address": "", "route": ""}
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reading["error"] = f"does not resolve: {getattr(exc, 'strerror', None) or exc}"
        return reading
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))[:2]
    for address in addresses:
        reading["address"] = address
        try:
            with socket.create_connection((address, port), timeout=timeout):
                reading["answers"], reading["error"] = True, ""
                break
        except socket.timeout:  # noqa: UP041 - TimeoutError is socket.timeout only from Python 3.10
            reading["error"] = f"no answer in {timeout:g} s"
        except OSError as exc:
            reading["error"] = exc.strerror or str(exc)
    ip = module.get_bin_path("ip")
    if ip and reading["address"]:
        rc, out, _ = module.run_command([ip, "route", "get", str(reading["address"])])
        reading["route"] = (out.strip().splitlines() or [""])[0] if rc == 0 else ""
    return reading


def read_upstreams(module: AnsibleModule) -> list[dict[str, object]]:
    timeout = float(module.params["upstream_timeout"])
    return [
        {"label": str(item.get("label") or ""), **probe_upstream(module, str(item["host"]), int(item["port"]), timeout)}
        for item in module.params["upstreams"]
    ]


def read_os() -> dict[str, str]:
    release = dict(line.partition("=")[::2] for line in _read("/etc/os-release").splitlines() if "=" in line)
    return {
        "name": release.get("PRETTY_NAME", "").strip('"'),
        "kernel": platform.release(),
        "machine": platform.machine(),
    }


def gather(module: AnsibleModule) -> dict[str, object]:
    """Every reading. Reads only: files, sysfs, NVML queries and commands that report (docker info, lsblk)."""
    modules = parse_modules(_read("/proc/modules"))
    docker, image = read_docker(module, module.params["image"])
    markers = {path: _read(path) for path in REBOOT_MARKERS if os.path.exists(path)}
    return {
        "os": read_os(),
        "cloud": {
            "sys_vendor": _read("/sys/class/dmi/id/sys_vendor"),
            "product_name": _read("/sys/class/dmi/id/product_name"),
            "chassis_asset_tag": _read("/sys/class/dmi/id/chassis_asset_tag"),
            "bios_vendor": _read("/sys/class/dmi/id/bios_vendor"),
        },
        "cpu": parse_cpu_flags(_read("/proc/cpuinfo")),
        "pci": read_pci(),
        "driver": read_driver(module, modules),
        "reboot": {"markers": markers},
        "secure_boot": read_secure_boot(module),
        "nouveau": "nouveau" in modules,
        "docker": docker,
        "image": image,
        "selinux": read_selinux(module),
        "disks": read_disks(module),
        "model_dir": read_model_dir(module.params["model_dir"]),
        "upstreams": read_upstreams(module),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "model_dir": {"type": "str", "default": ""},
            "image": {"type": "str", "default": ""},
            "upstreams": {"type": "list", "elements": "dict", "default": []},
            "upstream_timeout": {"type": "float", "default": 3.0},
        },
        supports_check_mode=True,
    )
    module.exit_json(changed=False, readings=gather(module))


if __name__ == "__main__":
    main()
