"""The lab's hosts: the public API (up, down, restart, status, ssh), starting clones of the template and
giving each its own identity (host keys, machine-id, hostname, clock) through the qemu guest agent."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from provision import paths
from provision.errors import EnvironmentProblem, UsageError
from provision.lab import aptcache
from provision.lab.image import FLAVORS, LAB_USER, building, ensure_base_image
from provision.lab.inventory import INVENTORY_HEADER, _write_inventory
from provision.lab.qemu import (
    QEMU,
    JsonChannel,
    PrivateNic,
    Vm,
    VmSpec,
    create_blank,
    create_overlay,
    guest_exec,
    require_tool,
)
from provision.lab.state import (
    LAB_SSH_KEX,
    PRIVATE_PREFIXLEN,
    SEGMENT_GROUP,
    LabDirs,
    LabHost,
    LabHostStatus,
    Log,
    _ensure_key,
    _index,
    _segment_port,
    dirs,
    private_address,
)
from provision.lab.template import BOOT_TIMEOUT, DATA_DISK_SIZE, _accel, _ensure_template, kernel_args

DEFAULT_BASE_PORT = 2201
RESUME_TIMEOUT = 120.0


# --- public API -------------------------------------------------------------------------------------------


def up(
    hosts: int,
    inventory_out: Path,
    mirror: bool,
    log: Log,
    base_port: int = DEFAULT_BASE_PORT,
    flavor: str = "plain",
    only: int | None = None,
) -> list[LabHost]:
    """Make sure lab1..labN run (with `only`, lab<only> alone), then write the inventory of every running lab host.

    Hosts that already run are left as they are; the ones started now are of `flavor` (see image.FLAVORS).
    Calls at the same time (two test lanes adding hosts) take turns.
    """
    if hosts < 1:
        raise UsageError("--hosts must be at least 1")
    spec, template = prepare(log, flavor)
    d = dirs()
    d.hosts.mkdir(parents=True, exist_ok=True)
    d.state.chmod(0o700)
    _ensure_key(d)
    if not d.segment.exists():
        d.segment.write_text(f"{base_port}\n")
    # The lab's own lock, taken once the image and template are ready (building them may take minutes): one call at
    # a time starts the package cache and VMs and writes the inventory.
    with building(d.state / "lab-up"):
        if mirror and aptcache.start(d.state, d.cache):
            log(f"package cache: apt-cacher-ng on 127.0.0.1:{aptcache.PORT} (guests: {aptcache.GUEST_URL})")
        return _start(d, hosts, inventory_out, mirror, log, base_port, flavor, only, spec, template)


def _start(
    d: LabDirs,
    hosts: int,
    inventory_out: Path,
    mirror: bool,
    log: Log,
    base_port: int,
    flavor: str,
    only: int | None,
    spec: VmSpec,
    template: Path,
) -> list[LabHost]:
    started: list[Vm] = []
    for index in [only] if only else range(1, hosts + 1):
        name = f"lab{index}"
        vm = _vm(d, name, spec)
        if vm.running():
            continue
        port = base_port + index - 1
        _check_port_free(port)
        if vm.directory.exists():
            shutil.rmtree(vm.directory)
        vm.directory.mkdir(parents=True)
        (vm.directory / "ssh-port").write_text(f"{port}\n")
        (vm.directory / "spec.json").write_text(json.dumps({k: str(v) for k, v in asdict(spec).items()}))
        (vm.directory / "flavor").write_text(f"{flavor}\n")
        vm = _vm(d, name, spec)
        create_overlay(vm.disk, template / "disk.qcow2")
        create_blank(vm.data_disk, DATA_DISK_SIZE)  # type: ignore[arg-type]
        vm.incoming = template / "state.bin"
        # A new host under an old name: facts cached for the one before it must not be used.
        (Path.home() / ".cache/provision/facts" / name).unlink(missing_ok=True)
        vm.start()
        vm.continue_after_incoming()
        started.append(vm)
    t0 = time.monotonic()
    for vm in started:
        _personalize(d, vm)
        log(f"{vm.name}: ready on 127.0.0.1:{vm.ssh_port} ({time.monotonic() - t0:.1f}s)")
    running = [h for h in status() if h.running]
    _write_inventory(d, inventory_out, running, mirror)
    return [LabHost(h.name, h.ssh_port, h.pid or 0) for h in running]


def down(log: Log) -> list[str]:
    """Stop exactly the VMs this lab started (by their pid files), remove their overlays and the lab state."""
    d = dirs()
    stopped = []
    for host in status():
        vm = _vm(d, host.name, None)
        if vm.running():
            vm.stop()
            stopped.append(host.name)
            log(f"{host.name}: stopped")
    if aptcache.stop(d.state):
        log("package cache: stopped")
    try:
        inventory = Path(d.inventory_record.read_text().strip())
        if inventory.exists() and inventory.read_text().startswith(INVENTORY_HEADER):
            inventory.unlink()
    except OSError:
        pass
    if d.state.exists():
        shutil.rmtree(d.state)
    return stopped


def prepare(log: Log, flavor: str = "plain") -> tuple[VmSpec, Path]:
    """The flavor's image and the saved, booted template its VMs resume from, built first where missing (minutes,
    once; cached): what `up` starts VMs from, in seconds.  The VMs' spec and the template's directory."""
    if flavor not in FLAVORS:
        raise UsageError(f"--flavor: unknown flavor {flavor!r} (known: {', '.join(FLAVORS)})")
    require_tool(QEMU, "qemu-system-x86")
    d = dirs()
    image = ensure_base_image(d.cache, log, flavor)
    accel = _accel(d, image, log)
    append = kernel_args(accel, FLAVORS[flavor].append)
    spec = VmSpec(kernel=image.kernel, initrd=image.initrd, append=append, accel=accel, cpus=_cpus(flavor))
    return spec, _ensure_template(d, image, spec, log)


def _cpus(flavor: str = "plain") -> int:
    """vCPUs per lab VM: PROVISION_LAB_CPUS, else the flavor's, else VmSpec's default (one; more pays off on a
    machine with cores to spare, or under KVM)."""
    value = os.environ.get("PROVISION_LAB_CPUS", "")
    if not value:
        return FLAVORS[flavor].cpus or VmSpec.cpus
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise UsageError(f"PROVISION_LAB_CPUS: {value!r} is not a number of vCPUs from 1 to 64")
    return int(value)


def restart(name: str, log: Log, data_disk: bool = True) -> None:
    """Power-cycle a lab VM and boot it cold from its own disk, optionally with its data disk detached.

    This is how tests see what a real reboot sees (fstab, units enabled at boot) and what happens when a
    cloud data disk is gone (a boot that must not hang on it).
    """
    d = dirs()
    vm = _vm(d, name, None)
    try:
        saved = json.loads((vm.directory / "spec.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"no lab host named {name!r} (see: provision lab status)") from None
    vm.spec = VmSpec(
        kernel=Path(saved["kernel"]),
        initrd=Path(saved["initrd"]),
        append=saved["append"],
        memory_mib=int(saved["memory_mib"]),
        cpus=int(saved["cpus"]),
        accel=saved["accel"],
        tcg_cpu=saved.get("tcg_cpu", VmSpec.tcg_cpu),  # a VM started before the model was recorded
    )
    vm.shutdown()
    if not data_disk:
        vm.data_disk = None
    started = time.monotonic()
    vm.start()
    _wait_for_ssh(d, vm, timeout=BOOT_TIMEOUT)
    detached = " without its data disk" if not data_disk else ""
    log(f"{name}: booted{detached} ({time.monotonic() - started:.0f}s)")


def status() -> list[LabHostStatus]:
    d = dirs()
    result = []
    for directory in sorted(d.hosts.glob("lab*"), key=lambda p: (len(p.name), p.name)):
        vm = _vm(d, directory.name, None)
        result.append(LabHostStatus(vm.name, vm.ssh_port, vm.pid(), vm.running()))
    return result


def ssh_argv(name: str, command: tuple[str, ...] = ()) -> list[str]:
    d = dirs()
    for host in status():
        if host.name == name:
            # One SSH connection per host, shared with provision's runs on it: the socket Ansible's ssh plugin
            # and provision_mitogen use (control_path() below), so a call after a run, or a run after calls, logs
            # in anew only when none is open (a new login costs ~0.4 s of a TCG guest's CPU; the tests make ~400
            # calls). It ends with the VM, whose forwarded port closes. Not where the socket's path would pass the
            # 108-byte limit of a socket name (%C expands to 40 characters).
            control = control_path()
            mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=300s"]
            if len(control) + 38 > 100:
                mux = []
            else:
                Path(control).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return ["ssh", *ssh_options(d), *mux, "-p", str(host.ssh_port), f"{LAB_USER}@127.0.0.1", *command]
    raise UsageError(f"no lab host named {name!r} (see: provision lab status)")


def control_path() -> str:
    """The ControlPath Ansible's ssh plugin (and provision_mitogen) use, from the project's ansible.cfg: its
    control_path with %(directory)s its control_path_dir, as the plugin expands it; where control_path is not
    set, %C (a hash of user, host and port) in that directory, as provision_mitogen does."""
    directory = paths.ansible_setting(paths.ANSIBLE_CFG, "ssh_connection", "control_path_dir") or "~/.ansible/cp"
    path = paths.ansible_setting(paths.ANSIBLE_CFG, "ssh_connection", "control_path") or "%(directory)s/%%C"
    return path % {"directory": Path(directory).expanduser()}


def ssh_options(d: LabDirs) -> list[str]:
    return [
        "-i", str(d.key), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={d.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", LAB_SSH_KEX,
    ]  # fmt: skip


# --- VMs --------------------------------------------------------------------------------------------------


def _vm(d: LabDirs, name: str, spec: VmSpec | None) -> Vm:
    directory = d.hosts / name
    try:
        port = int((directory / "ssh-port").read_text())
    except (OSError, ValueError):
        port = 0
    segment = _segment_port(d)
    nic = None if segment is None else PrivateNic(SEGMENT_GROUP, segment, f"52:54:00:77:00:{_index(name):02x}")
    return Vm(
        name=name,
        directory=directory,
        spec=spec or VmSpec(Path(), Path(), ""),
        ssh_port=port,
        disk=directory / "disk.qcow2",
        data_disk=directory / "data.qcow2",
        data_serial=f"{name}-data",
        private_nic=nic,
    )


def _check_port_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise EnvironmentProblem(f"port 127.0.0.1:{port} is taken; stop what uses it or pass --base-port") from None


def _host_keys(workdir: Path) -> tuple[bytes, str]:
    """Generate a clone's SSH host keys on the host; return them as a tar and the ed25519 public key."""
    for kind, bits in (("ed25519", []), ("ecdsa", ["-b", "256"]), ("rsa", ["-b", "3072"])):
        path = workdir / f"ssh_host_{kind}_key"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", "", "-f", str(path)], check=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(workdir.glob("ssh_host_*")):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644 if path.suffix == ".pub" else 0o600
            with path.open("rb") as f:
                tar.addfile(info, f)
    public = (workdir / "ssh_host_ed25519_key.pub").read_text().split()
    return buf.getvalue(), f"{public[0]} {public[1]}"


def _personalize(d: LabDirs, vm: Vm) -> None:
    """Give a resumed clone its own identity and clock, install the lab key, record its host key, and put it on
    the private segment."""
    with tempfile.TemporaryDirectory(prefix="hostkeys-") as tmp:
        keys_tar, host_key = _host_keys(Path(tmp))
    pubkey = (d.key.with_suffix(".pub")).read_text().strip()
    try:
        with vm.wait_for_agent(RESUME_TIMEOUT) as agent:
            result = guest_exec(
                agent,
                ["/usr/local/sbin/lab-personalize", vm.name, str(int(time.time())), pubkey, uuid.uuid4().hex],
                stdin=keys_tar,
            )
            if result.rc != 0:
                raise EnvironmentProblem(f"lab VM {vm.name}: personalising failed: {result.stderr.strip()}")
            _join_private_segment(agent, vm)
    except (OSError, TimeoutError, RuntimeError) as exc:
        raise EnvironmentProblem(
            f"lab VM {vm.name}: guest agent failed ({exc}); console:\n{vm.console_tail()}"
        ) from exc
    _record_host_key(d, vm.ssh_port, host_key)
    _wait_for_ssh(d, vm)


# systemd-networkd in the guest gives the private NIC its static address; matched by the clone's own MAC, so
# it wins over the image's DHCP-on-every-NIC file (10-lab.network) and holds on a cold boot too.  No IPv6 and no
# link-local addresses on the segment: the clones would all start from the template's.
PRIVATE_NETWORK_UNIT = r"""set -eu
unit=/etc/systemd/network/05-lab-private.network
printf '[Match]\nMACAddress=%s\n\n[Link]\nRequiredForOnline=no\n\n' "$1" > "$unit"
printf '[Network]\nAddress=%s\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' "$2" >> "$unit"
if command -v restorecon >/dev/null; then restorecon "$unit"; fi
networkctl reload
"""
# Until the NIC has its address (networkd takes a moment under TCG); then the lab is ready to use it.
PRIVATE_NETWORK_WAIT = r"""for _ in $(seq 600); do
    ip -4 -o address show | grep -q " inet $1/" && exit 0
    sleep 0.1
done
ip -o address show >&2
exit 1
"""


def _join_private_segment(agent: JsonChannel, vm: Vm) -> None:
    """Configure the guest for its private NIC, plug the NIC in, and wait until the guest has its address."""
    if vm.private_nic is None:
        return
    address = private_address(vm.name)
    unit = ["/bin/sh", "-c", PRIVATE_NETWORK_UNIT, "sh", vm.private_nic.mac, f"{address}/{PRIVATE_PREFIXLEN}"]
    result = guest_exec(agent, unit)
    if result.rc == 0:
        vm.plug_private_nic()
        result = guest_exec(agent, ["/bin/sh", "-c", PRIVATE_NETWORK_WAIT, "sh", address], timeout=90.0)
    if result.rc != 0:
        raise EnvironmentProblem(f"lab VM {vm.name}: no address on the private segment: {result.stderr.strip()}")


def _record_host_key(d: LabDirs, port: int, host_key: str) -> None:
    marker = f"[127.0.0.1]:{port} "
    lines = []
    if d.known_hosts.exists():
        lines = [line for line in d.known_hosts.read_text().splitlines() if not line.startswith(marker)]
    lines.append(marker + host_key)
    d.known_hosts.write_text("\n".join(lines) + "\n")


def _wait_for_ssh(d: LabDirs, vm: Vm, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    argv = ["ssh", *ssh_options(d), "-p", str(vm.ssh_port), f"{LAB_USER}@127.0.0.1", "true"]
    last = ""
    while time.monotonic() < deadline:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        time.sleep(0.5)
    raise EnvironmentProblem(f"lab VM {vm.name}: SSH on 127.0.0.1:{vm.ssh_port} does not answer ({last})")
