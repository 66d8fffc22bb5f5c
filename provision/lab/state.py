"""Where a lab keeps its things: the per-lab state directory (the lab's SSH key, known_hosts, one directory per
host with its overlays and pid files; `lab down` removes it) and the cache shared by every lab (images,
templates), both overridable through the environment."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.errors import UsageError
from provision.lab.qemu import require_tool

Log = Callable[[str], None]

# The key exchange the lab's SSH clients try first. OpenSSH 9's default, sntrup761x25519, costs an emulated guest's
# sshd ~0.8 s of its CPU per connection (2.1 s against 1.3 s for a new connection, measured in s32), and every
# `provision up` opens one per host; the rest of the default list follows, so a host whose sshd profile leaves
# curve25519 out is still reached.
LAB_SSH_KEX = "KexAlgorithms=^curve25519-sha256"

# The private segment: labN is PRIVATE_PREFIX.N (away from qemu's user network, 10.0.2.0/24), its NIC's MAC
# ends in N.  The multicast group is fixed; the UDP port is the lab's base port, so labs on other ports (the
# test suite's, a user's) are segments of their own.
PRIVATE_PREFIX = "10.77.0"
PRIVATE_PREFIXLEN = 24
SEGMENT_GROUP = "239.77.0.1"


@dataclass(frozen=True)
class LabHost:
    name: str
    ssh_port: int
    pid: int


@dataclass(frozen=True)
class LabHostStatus:
    name: str
    ssh_port: int
    pid: int | None
    running: bool


@dataclass(frozen=True)
class LabDirs:
    state: Path
    cache: Path

    @property
    def key(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def hosts(self) -> Path:
        return self.state / "hosts"

    @property
    def inventory_record(self) -> Path:
        return self.state / "inventory-path"

    @property
    def segment(self) -> Path:
        """The private segment's UDP port, decided by the lab's first `up` (from its base port)."""
        return self.state / "private-segment-port"


def dirs() -> LabDirs:
    state = os.environ.get("PROVISION_LAB_STATE") or os.path.expanduser("~/.local/state/provision/lab")
    cache = os.environ.get("PROVISION_LAB_CACHE") or os.path.expanduser("~/.cache/provision/lab")
    return LabDirs(Path(state), Path(cache))


def _ensure_key(d: LabDirs) -> None:
    if d.key.exists():
        return
    require_tool("ssh-keygen", "openssh-client")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "provision-lab", "-f", str(d.key)],
        check=True,
    )


def private_address(name: str) -> str:
    """labN's address on the private segment."""
    return f"{PRIVATE_PREFIX}.{_index(name)}"


def _index(name: str) -> int:
    index = int(name.removeprefix("lab"))
    if not 1 <= index <= 254:
        raise UsageError(f"{name}: the private segment has room for lab1..lab254")
    return index


def _segment_port(d: LabDirs) -> int | None:
    try:
        return int(d.segment.read_text())
    except (OSError, ValueError):
        return None  # a lab started before the private segment existed
