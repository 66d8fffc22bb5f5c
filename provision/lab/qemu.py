"""One qemu VM: its command line, its monitor (QMP) and its guest agent (QGA).

Both QMP and the guest agent speak line-delimited JSON over a unix socket, so one small client serves both.
The guest agent is how the lab reaches inside a VM without SSH: it sets the clock of a resumed clone,
gives it its own host keys and machine-id, and installs the lab's public key.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import EnvironmentProblem

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EnvironmentProblem(f"{name} not found; install it with: apt-get install {package}")
    return path


class JsonChannel:
    """Line-delimited JSON over a unix socket (QMP and the QEMU guest agent)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> JsonChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: dict) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{self.path}: closed by qemu")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        line = line.strip().lstrip(b"\xff")
        return json.loads(line) if line else self.receive()

    def call(self, command: str, **arguments: object) -> object:
        message: dict = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.send(message)
        while True:
            reply = self.receive()
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")


def qmp(path: Path, timeout: float = 30.0) -> JsonChannel:
    channel = JsonChannel(path, timeout)
    channel.receive()  # the greeting
    channel.call("qmp_capabilities")
    return channel


def qga(path: Path, timeout: float) -> JsonChannel:
    """Connect to the guest agent and resynchronise.

    Until the agent runs in the guest, what we send waits in qemu's buffer; replies to an earlier client's
    requests may arrive first.  So: send a sync with a fresh id every few seconds and read until one matches.
    """
    channel = JsonChannel(path, timeout)
    deadline = time.monotonic() + timeout
    channel.sock.settimeout(3.0)
    try:
        while time.monotonic() < deadline:
            sync_id = int(time.monotonic() * 1000) % 2**31
            channel.send({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
            try:
                while True:
                    if channel.receive().get("return") == sync_id:
                        channel.sock.settimeout(timeout)
                        return channel
            except TimeoutError:
                continue
    except BaseException:
        channel.close()
        raise
    channel.close()
    raise TimeoutError(f"{path}: the guest agent did not answer in {timeout:.0f}s")


@dataclass(frozen=True)
class ExecResult:
    rc: int
    stdout: str
    stderr: str


def guest_exec(channel: JsonChannel, argv: Sequence[str], timeout: float = 120.0, stdin: bytes = b"") -> ExecResult:
    arguments: dict = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    if stdin:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    pid = channel.call("guest-exec", **arguments)["pid"]  # type: ignore[index]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = channel.call("guest-exec-status", pid=pid)
        assert isinstance(status, dict)
        if status.get("exited"):
            return ExecResult(
                rc=status.get("exitcode", -1),
                stdout=base64.b64decode(status.get("out-data", "")).decode(errors="replace"),
                stderr=base64.b64decode(status.get("err-data", "")).decode(errors="replace"),
            )
        time.sleep(0.1)
    raise TimeoutError(f"guest command {argv[0]} did not finish in {timeout:.0f}s")


@dataclass(frozen=True)
class VmSpec:
    """Everything that makes a VM's device layout.  A clone must match its template's layout exactly."""

    kernel: Path
    initrd: Path
    append: str
    memory_mib: int = 2048
    # One vCPU: the suite runs several emulated guests on two cores, and a guest with two vCPUs there spends CPU
    # waiting on its other, descheduled vCPU (spinlocks, TLB-flush IPIs).  Measured (s32): three fresh plain VMs
    # converged at once took 366 s and 622 s of guest CPU with one vCPU each, 443 s and 769 s with two.
    cpus: int = 1
    accel: str = "tcg"
    # The CPU model qemu emulates under TCG (KVM passes the host's).  qemu64 (x86-64 with SSE2 only, all Debian 12
    # needs): guest code runs ~12% faster than on "max", whose SSE4.2/AVX paths in glibc and elsewhere TCG
    # emulates with slower helpers (s36, a plain VM, Python starts with imports, sha256, gzip: 6.3-7.2 s on
    # qemu64, 7.2-8.2 on max, 9.6-10.9 on Nehalem and Haswell; its boot 18 CPU-s against 21).  Part of a template's
    # identity: a saved state resumes only on the model that saved it.
    tcg_cpu: str = "qemu64"


@dataclass(frozen=True)
class PrivateNic:
    """A VM's second NIC, on the lab's private segment: qemu's multicast socket netdev, a shared L2 segment
    between the VMs that join one group and port, without root, bridges or taps.  localaddr pins the
    multicast traffic to the loopback interface, so no frame leaves this machine."""

    group: str
    port: int
    mac: str

    NETDEV = "private"
    DEVICE = "private-nic"

    def netdev(self) -> dict[str, str]:
        return {"type": "socket", "id": self.NETDEV, "mcast": f"{self.group}:{self.port}", "localaddr": "127.0.0.1"}

    def device(self) -> dict[str, str]:
        return {"driver": "virtio-net-pci", "id": self.DEVICE, "netdev": self.NETDEV, "mac": self.mac}


def _options(values: dict[str, str], first: str) -> str:
    """qemu's command-line form of a QMP argument dict: the `first` key's value leads, unnamed."""
    return ",".join([values[first], *(f"{k}={v}" for k, v in values.items() if k != first)])


@dataclass
class Vm:
    """A VM's files live in one directory: overlays, sockets, console log, pid file."""

    name: str
    directory: Path
    spec: VmSpec
    ssh_port: int
    disk: Path
    data_disk: Path | None
    data_serial: str = ""
    incoming: Path | None = None
    private_nic: PrivateNic | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qmp_path(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def qga_path(self) -> Path:
        return self.directory / "qga.sock"

    @property
    def console(self) -> Path:
        return self.directory / "console.log"

    def argv(self) -> list[str]:
        spec = self.spec
        accel = (
            ["-accel", "kvm", "-cpu", "host"]
            if spec.accel == "kvm"
            else ["-accel", "tcg,thread=multi", "-cpu", spec.tcg_cpu]
        )
        argv = [
            QEMU, "-name", self.name, "-machine", "pc", *accel, "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
            "-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.append,
            "-drive", f"file={self.disk},if=none,id=root,format=qcow2,cache=writeback,discard=unmap",
            "-device", "virtio-blk-pci,drive=root",
        ]  # fmt: skip
        if self.data_disk is not None:
            # The serial is how Aliyun users match a data disk (/sys/block/vdb/serial, /dev/disk/by-id).
            # discard=unmap: as on a cloud disk, a discarded range reads zeros afterwards (tests blank it so).
            serial = f",serial={self.data_serial}" if self.data_serial else ""
            argv += [
                "-drive", f"file={self.data_disk},if=none,id=data,format=qcow2,cache=writeback,discard=unmap",
                "-device", f"virtio-blk-pci,drive=data{serial}",
            ]  # fmt: skip
        argv += [
            "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-chardev", f"socket,id=qga0,path={self.qga_path},server=on,wait=off",
            "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-serial", f"file:{self.console}", "-display", "none", "-monitor", "none",
            "-pidfile", str(self.pidfile), "-daemonize",
        ]  # fmt: skip
        if self.private_nic is not None and self.incoming is None:
            # A clone resuming its template's state has the template's devices only: it gets this NIC plugged
            # in once it runs (plug_private_nic).  A cold boot has it from the start.
            argv += [
                "-netdev", _options(self.private_nic.netdev(), "type"),
                "-device", _options(self.private_nic.device(), "driver"),
            ]  # fmt: skip
        if self.incoming is not None:
            argv += ["-incoming", f"exec:cat {self.incoming}"]
        return argv + self.extra_args

    def plug_private_nic(self) -> None:
        """Hot-plug the private NIC into a running clone (the guest sees a PCI device arrive)."""
        if self.private_nic is None:
            return
        with qmp(self.qmp_path) as monitor:
            monitor.call("netdev_add", **self.private_nic.netdev())
            monitor.call("device_add", **self.private_nic.device())

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in (self.qmp_path, self.qga_path, self.pidfile):
            stale.unlink(missing_ok=True)
        proc = subprocess.run(self.argv(), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            if "Could not set up host forwarding" in proc.stderr:
                message = f"port 127.0.0.1:{self.ssh_port} is taken; stop what uses it or pick another --base-port"
            raise EnvironmentProblem(f"lab VM {self.name} did not start: {message}")

    def continue_after_incoming(self, timeout: float = 60.0) -> None:
        """A clone resumes paused (its template was stopped before saving): wait for the state, then run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with qmp(self.qmp_path, timeout=10.0) as monitor:
                    while time.monotonic() < deadline:
                        status = monitor.call("query-status")
                        assert isinstance(status, dict)
                        if status.get("status") == "running":
                            return
                        if status.get("status") == "paused":
                            monitor.call("cont")
                            return
                        time.sleep(0.1)
            except (OSError, ConnectionError, ValueError):
                if not self.running():
                    raise EnvironmentProblem(f"lab VM {self.name} exited while loading its saved state") from None
                time.sleep(0.1)
        raise EnvironmentProblem(f"lab VM {self.name} did not load its saved state in {timeout:.0f}s")

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def console_tail(self, lines: int = 15) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def wait_for_agent(self, timeout: float) -> JsonChannel:
        """Wait until the guest agent answers; fail with the console's tail if the VM dies or stalls."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running():
                raise EnvironmentProblem(f"lab VM {self.name} stopped while booting; console:\n{self.console_tail()}")
            try:
                return qga(self.qga_path, timeout=min(15.0, max(1.0, deadline - time.monotonic())))
            except (OSError, ConnectionError, ValueError) as exc:
                last_error = exc
                time.sleep(0.5)
        raise EnvironmentProblem(
            f"lab VM {self.name} did not come up in {timeout:.0f}s ({last_error}); console:\n{self.console_tail()}"
        )

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and is_our_qemu(pid, self.directory)

    def shutdown(self, timeout: float = 90.0) -> None:
        """Shut the guest down cleanly (guest agent), falling back to stop() if it does not power off."""
        pid = self.pid()
        if pid is None or not is_our_qemu(pid, self.directory):
            return
        try:
            with qga(self.qga_path, timeout=15.0) as agent:
                # systemd's own poweroff: the agent's guest-shutdown (and the ACPI power button) go through
                # logind's scheduled shutdown, which an enforcing SELinux policy refuses ("Failed to save
                # information about scheduled shutdowns"), and the guest then ran on until the timeout below.
                agent.call("guest-exec", path="/usr/bin/systemctl", arg=["poweroff"])
        except (OSError, ConnectionError, ValueError, RuntimeError):
            try:
                with qga(self.qga_path, timeout=5.0) as agent:
                    agent.send({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}})
            except (OSError, ConnectionError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
        self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop this VM: ask QMP to quit, then SIGTERM, then SIGKILL.  Only a qemu started from this directory."""
        pid = self.pid()
        if pid is None or not is_our_qemu(pid, self.directory):
            return
        try:
            # Wait for the answer: a command whose client hangs up at once may never be run (the suite's
            # teardown waited out the 15 s and killed each VM).
            with qmp(self.qmp_path, timeout=5.0) as monitor:
                monitor.call("quit")
        except (OSError, ConnectionError, ValueError, RuntimeError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def is_our_qemu(pid: int, directory: Path) -> bool:
    """True when pid is a live qemu whose command line names this VM's directory (pids get reused)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (
        bool(cmdline)
        and Path(cmdline[0].decode()).name.startswith("qemu-system")
        and any(str(directory).encode() in part for part in cmdline)
    )


def create_overlay(path: Path, backing: Path) -> None:
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "qcow2", str(path))


def create_blank(path: Path, size: str) -> None:
    _qemu_img("create", "-q", "-f", "qcow2", str(path), size)


def _qemu_img(*args: str) -> None:
    require_tool(QEMU_IMG, "qemu-utils")
    proc = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"qemu-img {args[0]} failed: {proc.stderr.strip()}")
