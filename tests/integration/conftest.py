"""Integration tests: real lab VMs (qemu), the real playbooks, checked with testinfra.

One lab of two VMs is started per test session and shared by every test; its state lives in a temporary
directory, apart from any lab the user runs, on ports of its own.  Image and template come from the cache
(~/.cache/provision/lab), built on first use.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_PORT = 2311


@dataclass(frozen=True)
class Lab:
    inventory: Path
    state: Path
    env: dict[str, str]

    def provision(self, *args: str, check: bool = False, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "provision", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        # Shown by pytest only when a test fails: what the user would have seen.
        print(f"$ provision {' '.join(args)}\n{proc.stdout}\n{proc.stderr}\n(exit {proc.returncode})")
        if check and proc.returncode != 0:
            raise AssertionError(f"provision {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        return self.provision("lab", "ssh", host, "--", command)


RECAP = re.compile(r"^(?P<host>\S+)\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)", re.M)  # fmt: skip


def recap(output: str) -> dict[str, dict[str, int]]:
    """The per-host recap `provision up` prints at the end, as numbers."""
    found = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"} for m in RECAP.finditer(output)}
    assert found, f"no recap in output:\n{output}"
    return found


def our_qemu_pids(state: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and str(state).encode() in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("lab")
    state, inventory = base / "state", base / "inventory"
    inventory.mkdir()
    shutil.copytree(ROOT / "inventories" / "lab" / "group_vars", inventory / "group_vars")
    env = {**os.environ, "PROVISION_LAB_STATE": str(state)}
    lab = Lab(inventory=inventory, state=state, env=env)
    try:
        lab.provision(
            "lab", "up", "--hosts", "2", "--base-port", str(BASE_PORT), "--inventory-out", str(inventory / "hosts.yml"),
            check=True,
        )  # fmt: skip
        yield lab
    finally:
        lab.provision("lab", "down")
        leftover = our_qemu_pids(state)
        assert not leftover, f"lab down left qemu processes running: {leftover}"


@pytest.fixture(scope="session")
def converged(lab: Lab) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """`provision up` run twice on the fresh lab: (first run, second run)."""
    first = lab.provision("up", "-i", str(lab.inventory))
    second = lab.provision("up", "-i", str(lab.inventory))
    return first, second
