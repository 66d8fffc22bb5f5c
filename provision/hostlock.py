"""One changing run at a time per host, from this controller.

Two `provision up` runs against one host race apt, nginx and Docker on it. Before a run that may change
hosts, the controller takes an exclusive lock (flock) per targeted host, keyed by the address Ansible connects
to, and holds it until the run ends; a second run finds a lock held, says which run holds it, and waits for it
to end before contacting anything. The kernel drops a lock when its process ends, however it ends (Ctrl-C,
SIGTERM, SIGKILL, a crash), so no lock is ever left stale. Locks live in ~/.cache/provision/locks (0700;
PROVISION_LOCK_DIR elsewhere);
runs from another controller are not seen (the weights role's own per-model lock on the host still keeps
two pulls of one model apart).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


def lock_dir() -> Path:
    return Path(os.environ.get("PROVISION_LOCK_DIR") or "~/.cache/provision/locks").expanduser()


def address(name: str, hostvars: Mapping[str, Any]) -> str:
    """What makes two inventory entries the same machine: the address and port Ansible connects to."""
    host = hostvars.get("ansible_host") or name
    port = hostvars.get("ansible_port") or 22
    return f"{host}:{port}"


@contextlib.contextmanager
def hold(hosts: Mapping[str, str], note: Callable[[str], None]) -> Iterator[None]:
    """Lock every host (name -> address) for the duration of the block, first waiting for the runs that hold
    one, saying so through `note` (Ctrl-C while waiting interrupts as usual)."""
    if not hosts:
        yield
        return
    directory = lock_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    held: list[int] = []
    try:
        # One lock per address, in a fixed order (no deadlock); two names for one machine would otherwise open
        # its lock twice, and this process would wait for itself.
        for key, name in sorted({key: name for name, key in hosts.items()}.items()):
            path = directory / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            held.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                note(f"{name} ({key}) is being provisioned by another run: {_holder(path)}; waiting for it to end "
                     "(Ctrl-C to give up)")  # fmt: skip
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            info = {"pid": os.getpid(), "started": time.strftime("%H:%M:%S"), "argv": sys.argv[1:]}
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        for fd in held:
            os.close(fd)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']}, started {info['started']}, `provision {' '.join(info['argv'])}`"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that is just starting"
