"""A package cache on the host (apt-cacher-ng), the lab's stand-in for a configured package mirror.

Lab VMs reach it as http://10.0.2.2:3142 through qemu's user network, which is how the `base` role's
mirror setting is exercised for real.  The host has no systemd as PID 1, so the lab starts it by hand with
a PID file and stops it by that PID, and only if it started it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from provision.errors import EnvironmentProblem
from provision.lab.qemu import pid_alive, read_pid, require_tool

PORT = 3142
GUEST_URL = f"http://10.0.2.2:{PORT}"
BINARY = "/usr/sbin/apt-cacher-ng"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _is_acng(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /acng-report.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
            # The headers may come in a packet of their own: read the answer until the name shows or it ends.
            answer = b""
            while b"apt-cacher-ng" not in answer.lower() and len(answer) < 1 << 16:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return b"apt-cacher-ng" in answer.lower()
    except OSError:
        return False


def start(state_dir: Path, cache_dir: Path) -> bool:
    """Start the cache unless one already answers on the port.  Returns True when this call started it."""
    pidfile = state_dir / "apt-cacher-ng.pid"
    pid = read_pid(pidfile)
    if pid is not None and pid_alive(pid) and _port_open(PORT):
        return False
    if _port_open(PORT):
        if _is_acng(PORT):
            return False  # someone else's apt-cacher-ng: use it, never stop it
        raise EnvironmentProblem(f"port 127.0.0.1:{PORT} is taken by something that is not apt-cacher-ng")
    if not Path(BINARY).exists():
        require_tool("apt-cacher-ng", "apt-cacher-ng")
    store, logs, conf = cache_dir / "apt-cacher-ng", state_dir / "apt-cacher-ng-log", state_dir / "apt-cacher-ng-conf"
    for directory in (store, logs, conf):
        directory.mkdir(parents=True, exist_ok=True)
    # Our own configuration, not /etc/apt-cacher-ng: Debian's remaps send deb.debian.org requests to a
    # backend list (ftp.debian.org) that may not resolve where only the registry's own name does.  With no
    # remap, a URL like http://10.0.2.2:3142/deb.debian.org/debian/... is fetched from that very host.
    (conf / "acng.conf").write_text(
        f"CacheDir: {store}\nLogDir: {logs}\nSupportDir: /usr/lib/apt-cacher-ng\nPort: {PORT}\n"
        f"BindAddress: 127.0.0.1\nPidFile: {pidfile}\nReportPage: acng-report.html\nExThreshold: 4\n"
    )
    pidfile.unlink(missing_ok=True)
    proc = subprocess.run([BINARY, "-c", str(conf), "ForeGround=0"], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"apt-cacher-ng did not start: {(proc.stderr or proc.stdout).strip()[-300:]}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _port_open(PORT):
            return True
        time.sleep(0.1)
    raise EnvironmentProblem(f"apt-cacher-ng did not start listening on 127.0.0.1:{PORT}; see {logs}")


def stop(state_dir: Path) -> bool:
    pidfile = state_dir / "apt-cacher-ng.pid"
    pid = read_pid(pidfile)
    if pid is None or not pid_alive(pid):
        pidfile.unlink(missing_ok=True)
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    if not exe.endswith("apt-cacher-ng"):
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    pidfile.unlink(missing_ok=True)
    return True


def running(state_dir: Path) -> bool:
    pid = read_pid(state_dir / "apt-cacher-ng.pid")
    return pid is not None and pid_alive(pid)
