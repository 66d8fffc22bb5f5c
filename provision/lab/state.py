"""Where a lab keeps its things: the per-lab state directory (the lab's SSH key, known_hosts, one directory per
host with its overlays and pid files; `lab down` removes it) and the cache shared by every lab (images,
templates), both overridable through the environment."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.lab.qemu import require_tool

Log = Callable[[str], None]


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
