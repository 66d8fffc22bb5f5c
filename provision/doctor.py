"""`provision doctor`: can each host serve its model, on its GPUs where it should, and if not, why.

One read-only call per host (playbooks/doctor.yml runs playbooks/library/host_doctor.py) brings back the readings;
everything here is decided from them by pure functions (cloud_of, driver_cuda, decide, table), unit-tested with
fixture readings in tests/unit/test_doctor.py. What the inventory says about a host (does it serve, on GPUs or
not, which image, where the models go, which upstreams it must reach) is resolved as the roles resolve it: their
defaults, the inventory, -e.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provision.errors import ExitCode, UsageError
from provision.smoke.egress_checks import route_device

PLAYBOOK = "doctor.yml"
GIB = 1 << 30

# The highest CUDA each driver branch supports, as nvidia-smi reports it ("CUDA Version"); used when NVML cannot
# say (nvidia-smi only, or NVML mismatched). From NVIDIA's CUDA toolkit release notes (minimum driver per toolkit:
# 12.2 GA >= 535.54.03, 12.3 >= 545.23.06, 12.4 >= 550.54.14, 12.5 >= 555.42.02, 12.6 >= 560.28.03, 12.8 >=
# 570.26, 12.9 >= 575.51.03, 13.0 >= 580.65.06); 565 drivers report 12.7, a CUDA that had no toolkit release.
CUDA_BY_BRANCH = {
    525: "12.0",
    530: "12.1",
    535: "12.2",
    545: "12.3",
    550: "12.4",
    555: "12.5",
    560: "12.6",
    565: "12.7",
    570: "12.8",
    575: "12.9",
    580: "13.0",
}
GPU_SETTINGS = ("auto", "true", "false")
# Where an egress destination that names no port is tried: APIs and model hubs answer HTTPS.
DESTINATION_PORT = 443


@dataclass(frozen=True)
class Upstream:
    """Something a host must reach that may need a way out: a relay's upstream, an OpenVPN destination."""

    label: str  # where it is configured
    host: str
    port: int


@dataclass(frozen=True)
class Intent:
    """What the inventory says about a host, resolved as the roles would resolve it."""

    serves: bool  # in the group the inference role runs on (playbooks/serving.yml)
    gpus: str = "auto"  # inference_gpus: auto, true or false
    image: str = ""  # inference_image, on a host that serves
    model_dir: str = ""  # weights_root
    upstreams: tuple[Upstream, ...] = ()
    tunnel_device: str = ""  # the OpenVPN client's device, on a host that has one


@dataclass(frozen=True)
class Driver:
    """The NVIDIA driver as the readings show it."""

    version: str = ""  # "" when no driver is loaded
    cuda: str = ""  # the highest CUDA it supports
    cuda_from: str = ""  # nvml, or the branch table
    gpus: int | None = None  # GPUs it sees; None when nothing could ask it (no NVML, no nvidia-smi)
    names: tuple[str, ...] = ()
    mismatch: bool = False  # NVML and the loaded kernel module differ: a reboot is pending
    error: str = ""


@dataclass(frozen=True)
class Verdict:
    blocks: tuple[str, ...] = ()  # each one reason the host cannot serve as the inventory says
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostReport:
    host: str
    intent: Intent
    readings: Mapping[str, Any] | None  # None when the host could not be read
    problem: str = ""  # why it could not be read (unreachable, a failed call)
    verdict: Verdict = field(default_factory=Verdict)

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "intent": {"serves": self.intent.serves, "gpus": self.intent.gpus, "image": self.intent.image,
                       "model_dir": self.intent.model_dir, "tunnel_device": self.intent.tunnel_device,
                       "upstreams": [upstream.__dict__ for upstream in self.intent.upstreams]},
            "readings": self.readings,
            "problem": self.problem,
            "cloud": cloud_of(self.readings.get("cloud", {})) if self.readings else None,
            "driver": driver_of(self.readings).__dict__ if self.readings else None,
            "blocks": list(self.verdict.blocks),
            "warnings": list(self.verdict.warnings),
            "notes": list(self.verdict.notes),
        }  # fmt: skip


# ---- what the readings mean (pure) ----------------------------------------------------------------------


def cloud_of(dmi: Mapping[str, str]) -> str:
    """gcp, oci, aliyun or other, from DMI (sys_vendor, product_name, chassis_asset_tag)."""
    vendor, product = dmi.get("sys_vendor", ""), dmi.get("product_name", "")
    if vendor == "Google" or product == "Google Compute Engine":
        return "gcp"
    if dmi.get("chassis_asset_tag", "") == "OracleCloud.com" or vendor.startswith("Oracle"):
        return "oci"
    if vendor.startswith("Alibaba Cloud") or product.startswith("Alibaba Cloud"):
        return "aliyun"
    return "other"


def cuda_for_branch(version: str) -> str:
    """The highest CUDA a driver version supports, by its branch (550.54.14 -> 12.4); "" for one not in the table."""
    match = re.match(r"(\d+)\.", version)
    return CUDA_BY_BRANCH.get(int(match.group(1)), "") if match else ""


def cuda_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def driver_of(readings: Mapping[str, Any]) -> Driver:
    """The driver as NVML saw it; else as nvidia-smi saw it; else what /proc/driver/nvidia says."""
    reading = readings.get("driver") or {}
    nvml = reading.get("nvml") or {}
    proc_version = str(reading.get("proc_version") or "")
    if nvml.get("init") == 18:  # NVML_ERROR_LIB_RM_VERSION_MISMATCH
        return Driver(
            version=proc_version,
            cuda=cuda_for_branch(proc_version),
            cuda_from="table" if proc_version else "",
            mismatch=True,
            error=str(nvml.get("error") or ""),
        )
    if nvml.get("init") == 0:
        version = str(nvml.get("driver") or proc_version)
        cuda = str(nvml.get("cuda") or "")
        return Driver(
            version=version,
            cuda=cuda or cuda_for_branch(version),
            cuda_from="nvml" if cuda else "table",
            gpus=int(nvml.get("count") or 0) if "count" in nvml else None,
            names=tuple(nvml.get("gpus") or ()),
            error=str(nvml.get("error") or ""),
        )
    smi = reading.get("smi") or {}
    if smi.get("rc") == 0:
        gpus = smi.get("gpus") or []
        version = str(gpus[0]["driver"]) if gpus else proc_version
        return Driver(
            version=version,
            cuda=cuda_for_branch(version),
            cuda_from="table" if version else "",
            gpus=len(gpus),
            names=tuple(str(gpu["name"]) for gpu in gpus),
        )
    error = str(nvml.get("error") or smi.get("error") or "")
    if proc_version:  # the kernel module is loaded, but nothing here could ask it about its GPUs
        return Driver(
            version=proc_version,
            cuda=cuda_for_branch(proc_version),
            cuda_from="table",
            gpus=int(reading.get("proc_gpus") or 0),
            error=error,
        )
    return Driver(error=error)


def gpus_on_bus(readings: Mapping[str, Any]) -> int | None:
    """NVIDIA GPUs on the PCI bus; None when the host shows no PCI bus (some micro-VMs pass GPUs without one)."""
    pci = readings.get("pci") or {}
    if not pci.get("visible"):
        return None
    return sum(1 for dev in pci.get("nvidia") or [] if dev.get("kind") == "gpu")


def nvswitches(readings: Mapping[str, Any]) -> int:
    return sum(1 for dev in (readings.get("pci") or {}).get("nvidia") or [] if dev.get("kind") == "nvswitch")


def serves_on_gpus(intent: Intent, readings: Mapping[str, Any]) -> bool:
    """Whether the host is meant to serve on GPUs: inference_gpus true, or auto with NVIDIA GPUs on the bus or
    seen by a driver."""
    if not intent.serves or intent.gpus == "false":
        return False
    if intent.gpus == "true":
        return True
    return bool(gpus_on_bus(readings)) or bool(driver_of(readings).gpus)


def decide(intent: Intent, readings: Mapping[str, Any]) -> Verdict:
    """Why the host cannot serve as the inventory says (blocks), what looks wrong but does not stop it (warnings),
    and what is worth knowing (notes)."""
    blocks: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    driver = driver_of(readings)
    bus = gpus_on_bus(readings)
    docker = readings.get("docker") or {}
    image = readings.get("image") or {}
    markers = (readings.get("reboot") or {}).get("markers") or {}
    reboot = [f"{path} ({text.splitlines()[0]})" if text else path for path, text in sorted(markers.items())]
    on_gpus = serves_on_gpus(intent, readings)

    if intent.serves:
        if not docker.get("present"):
            blocks.append("docker is not installed (the container_runtime role of `provision up` installs it)")
        elif not docker.get("answers"):
            blocks.append(f"docker does not answer: {docker.get('error') or 'docker info failed'}")
    if on_gpus:
        setting = f"inference_gpus is {intent.gpus}"
        if driver.mismatch:
            blocks.append(f"NVML and the loaded driver {driver.version or ''} differ: reboot to load the new driver")
        elif not driver.version:
            where = f"{bus} on the PCI bus" if bus else "none on the PCI bus" if bus == 0 else "PCI bus not visible"
            blocks.append(f"{setting} but no NVIDIA driver is loaded ({where})")
        elif not driver.gpus:
            blocks.append(f"{setting} but the NVIDIA driver {driver.version} sees no GPU")
        if reboot and not driver.mismatch:
            blocks.append(f"a reboot is pending: {', '.join(reboot)}")
        if readings.get("nouveau"):
            blocks.append("nouveau is loaded: blacklist it and reboot (the nvidia role does)")
        if readings.get("secure_boot") == "enabled" and not driver.version:
            blocks.append("Secure Boot is on and no NVIDIA module is loaded: an unsigned module is refused")
        if docker.get("answers") and "nvidia" not in (docker.get("runtimes") or []):
            blocks.append("docker has no nvidia runtime (the NVIDIA container toolkit configures it)")
        needed = str(image.get("cuda") or "")
        if needed and driver.cuda and cuda_tuple(driver.cuda) < cuda_tuple(needed):
            blocks.append(
                f"{image.get('name')} needs CUDA {needed} ({image.get('source')}); driver {driver.version} supports "
                f"CUDA {driver.cuda} at most: upgrade the driver"
            )
    elif reboot:
        warnings.append(f"a reboot is pending: {', '.join(reboot)}")
    if bus is not None and driver.gpus is not None and bus != driver.gpus and (bus or driver.gpus):
        warnings.append(f"{bus} NVIDIA GPU(s) on the PCI bus but the driver sees {driver.gpus}")
    if bus and not driver.version and not on_gpus:
        warnings.append(f"{bus} NVIDIA GPU(s) on the PCI bus and no driver loaded: they are unused")
    if intent.serves and intent.gpus == "auto" and not on_gpus:
        notes.append("serves without GPUs: inference_gpus is auto and the host shows none")
    for disk in readings.get("disks") or []:
        size = f"{disk.get('size', 0) / GIB:.1f} GiB"
        if disk.get("contents") == "blank":
            warnings.append(f"{disk['device']} ({size}) is attached, blank and not mounted")
        else:
            warnings.append(f"{disk['device']} ({size}) holds {disk['contents']} and nothing of it is mounted")
    if driver.names:
        notes.append(f"GPUs: {', '.join(driver.names)}")
    if driver.version:
        source = {"nvml": "from NVML", "table": "by driver branch"}.get(driver.cuda_from, "")
        notes.append(f"driver {driver.version}, CUDA {driver.cuda or 'unknown'} {source}".rstrip())
    if nvswitches(readings):
        notes.append(f"{nvswitches(readings)} NVSwitch(es) on the PCI bus: nvidia-fabricmanager must run")
    if image.get("present"):
        needs = f"needs CUDA {image['cuda']} ({image.get('source')})" if image.get("cuda") else "names no CUDA"
        notes.append(f"image {image.get('name')} is on the host and {needs}")
    elif intent.serves and intent.image:
        notes.append(f"image {intent.image} is not on the host yet: its CUDA is checked once it is")
    model = readings.get("model_dir") or {}
    if model.get("path") and "free" in model:
        at = "" if model.get("exists") else f" (not made yet; measured at {model.get('measured_at')})"
        notes.append(
            f"model dir {model['path']}: {model['free'] / GIB:.1f} GiB free of {model['size'] / GIB:.1f} GiB{at}"
        )
    upstream_warnings, upstream_notes = upstream_findings(intent, readings)
    return Verdict(tuple(blocks), tuple(warnings + upstream_warnings), tuple(notes + upstream_notes))


def upstream_findings(intent: Intent, readings: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(warnings, notes): each configured upstream the host could not reach, and each it reached, directly or
    through its OpenVPN tunnel."""
    warnings, notes = [], []
    for probe in readings.get("upstreams") or []:
        what = f"upstream {probe['host']}:{probe['port']} ({probe.get('label') or 'configured'})"
        tunnel = bool(intent.tunnel_device) and route_device(probe.get("route") or "") == intent.tunnel_device
        error = probe.get("error") or "no answer"
        if probe.get("answers"):
            notes.append(f"{what} answers {'through the tunnel ' + intent.tunnel_device if tunnel else 'directly'}")
        elif tunnel:
            warnings.append(f"{what} does not answer through the tunnel {intent.tunnel_device}: {error}")
        else:
            warnings.append(
                f"{what} does not answer directly ({error}): it needs a way out "
                "(openvpn_client_destinations, an SSH tunnel, or a relay on a host that reaches it)"
            )
    return warnings, notes


# ---- the table (pure) -----------------------------------------------------------------------------------

# GPUS is "on the PCI bus/seen by the driver"; VIRT the CPU's virtualisation flags (present, not proven to work).
COLUMNS = ("HOST", "CLOUD", "VIRT", "GPUS", "DRIVER", "CUDA", "REBOOT", "SECBOOT", "DOCKER", "SELINUX",
           "VERDICT")  # fmt: skip


def row(report: HostReport) -> tuple[str, ...]:
    readings = report.readings
    if readings is None:
        return (
            report.host,
            *["-"] * (len(COLUMNS) - 2),
            "unreachable" if "unreachable" in report.problem else "failed",
        )
    driver = driver_of(readings)
    bus = gpus_on_bus(readings)
    cpu = readings.get("cpu") or {}
    virt = " ".join(flag for flag in ("vmx", "svm") if cpu.get(flag)) or "absent"
    seen = "-" if driver.gpus is None else str(driver.gpus)
    docker = readings.get("docker") or {}
    runtimes = docker.get("runtimes") or []
    docker_text = (
        "absent"
        if not docker.get("present")
        else "down"
        if not docker.get("answers")
        else "nvidia"
        if "nvidia" in runtimes
        else "runc"
    )
    markers = (readings.get("reboot") or {}).get("markers") or {}
    return (
        report.host,
        cloud_of(readings.get("cloud") or {}),
        virt,
        f"{'?' if bus is None else bus}/{seen}",
        "mismatch" if driver.mismatch else driver.version or "-",
        driver.cuda or "-",
        "pending" if markers or driver.mismatch else "no",
        str(readings.get("secure_boot") or "unknown"),
        docker_text,
        str(readings.get("selinux") or "unknown"),
        "blocked" if report.verdict.blocks else "ok",
    )


def table(reports: list[HostReport]) -> list[str]:
    """One row per host, then per host its blocks, warnings and notes, one line each."""
    rows = [COLUMNS, *(row(report) for report in reports)]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip() for cells in rows]
    details = []
    for report in reports:
        if report.problem:
            details.append(f"{report.host}: {report.problem}")
        details += [f"{report.host}: blocks serving: {text}" for text in report.verdict.blocks]
        details += [f"{report.host}: warning: {text}" for text in report.verdict.warnings]
        details += [f"{report.host}: {text}" for text in report.verdict.notes]
    if any(r.readings and gpus_on_bus(r.readings) is None for r in reports):
        details.append("GPUS is on the PCI bus/seen by the driver: ? = the host shows no PCI bus, - = no driver")
    return lines + ([""] if details else []) + details


# ---- the run ----------------------------------------------------------------------------------------------


def gpu_setting(host: str, value: Any) -> str:
    """inference_gpus as auto, true or false; anything else is a usage error naming the host."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    aliases = {"yes": "true", "on": "true", "1": "true", "no": "false", "off": "false", "0": "false"}
    text = aliases.get(text, text)
    if text not in GPU_SETTINGS:
        raise UsageError(f"{host}: inference_gpus: {value!r} is not one of 'auto', true, false")
    return text


def intents(inventory: Any, hosts: list[str], extravars: Mapping[str, Any]) -> dict[str, Intent]:
    """What the inventory (with -e on top) says about each host, from the roles' defaults up, as render does."""
    from provision import render

    groups = render.render_groups()
    serving = set(inventory.select(groups["inference"]))
    gateways = set(inventory.select(groups["nginx"]))
    found = {}
    for host in hosts:
        variables = render.HostVars(inventory, host, dict(extravars))
        serves = host in serving
        vpn = bool(_offline(variables, "openvpn_client_remote"))
        found[host] = Intent(
            serves=serves,
            gpus=gpu_setting(host, variables["inference_gpus"]),
            image=_offline(variables, "inference_image") if serves else "",
            model_dir=_offline(variables, "weights_root"),
            upstreams=upstreams_of(variables, relay=host in gateways, vpn=vpn),
            tunnel_device=_offline(variables, "openvpn_client_device") if vpn else "",
        )
    return found


def upstreams_of(variables: Mapping[str, Any], relay: bool, vpn: bool) -> tuple[Upstream, ...]:
    """The relay's upstreams (a gateway host with the relay preset) and the OpenVPN client's destinations that
    name one host (a name or a single address; a range has no one address to try), each once."""
    found: dict[tuple[str, int], Upstream] = {}
    if relay and _offline(variables, "nginx_preset") == "relay":
        for route in _offline_list(variables, "nginx_relay_routes"):
            url = urlsplit(str(route.get("upstream", "")))
            if url.hostname:
                port = url.port or (443 if url.scheme == "https" else 80)
                found.setdefault((url.hostname, port), Upstream(f"relay {route.get('path', '')}", url.hostname, port))
    if vpn:
        for destination in _offline_list(variables, "openvpn_client_destinations"):
            host = single_host(str(destination))
            if host:
                key = (host, DESTINATION_PORT)
                found.setdefault(key, Upstream("openvpn_client_destinations", host, DESTINATION_PORT))
    return tuple(found.values())


def single_host(destination: str) -> str:
    """The host a destination names: a host name, or the address of a single-address network; "" for a range."""
    try:
        network = ipaddress.ip_network(destination.strip(), strict=False)
    except ValueError:
        return destination.strip()
    return str(network.network_address) if network.num_addresses == 1 else ""


def _offline(variables: Mapping[str, Any], name: str) -> str:
    """A path or name as the controller can resolve it; "" (not checked) when it needs what only a run has."""
    try:
        return str(variables[name])
    except UsageError:
        return ""


def _offline_list(variables: Mapping[str, Any], name: str) -> list[Any]:
    """A list setting as the controller can resolve it; empty when it needs what only a run has."""
    try:
        value = variables[name]
    except UsageError:
        return []
    return list(value) if isinstance(value, list) else []


def _doctor_vars(intent: Intent) -> dict[str, Any]:
    """What playbooks/doctor.yml passes host_doctor for one host."""
    upstreams = [upstream.__dict__ for upstream in intent.upstreams]
    return {"model_dir": intent.model_dir, "image": intent.image, "upstreams": upstreams}


@dataclass(frozen=True)
class Examination:
    reports: list[HostReport]
    code: ExitCode


def examine(
    inventory_path: Path,
    limit: str | None,
    extravars: Mapping[str, Any],
    strategy: str,
    note: Callable[[str], None],
) -> Examination:
    """Read every host once (changing nothing), decide, and say which exit code the result deserves."""
    from provision import events, play, runner

    inv, hosts = play.limited_inventory(inventory_path, limit)
    wanted = intents(inv, list(hosts), extravars)
    readings: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}

    def collect(event: runner.TaskEvent) -> None:
        if event.kind == "runner_on_ok" and event.result.readings is not None:
            readings[event.host] = dict(event.result.readings)
        elif event.kind == "runner_on_failed":
            problems[event.host] = f"could not be read: {events.failure_message(event.result)}"
        elif event.kind == "runner_on_unreachable":
            problems[event.host] = f"unreachable: {events.failure_message(event.result)}"

    request = runner.RunRequest(
        inventory=inv.path,
        playbook=PLAYBOOK,
        limit=limit,
        check=True,
        extravars={"__doctor_hosts": {h: _doctor_vars(i) for h, i in wanted.items()}},
        strategy=strategy,
    )
    result = runner.run(request, on_event=collect, note=note)
    reports = []
    for host in hosts:
        got = readings.get(host)
        verdict = decide(wanted[host], got) if got is not None else Verdict()
        ended = f"not read: ansible-playbook ended with status {result.status} (rc={result.rc})"
        problem = problems.get(host, "" if got is not None else ended)
        reports.append(HostReport(host, wanted[host], got, problem, verdict))
    code = play.outcome(result).code
    if code in (ExitCode.OK, ExitCode.UNREACHABLE, ExitCode.FAILED) and any(r.verdict.blocks for r in reports):
        code = ExitCode.FAILED
    return Examination(reports, code)
