"""What the integration tests share: running provision as a user does, reading its recap."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from provision.lab.qemu import guest_exec, qga, qmp

ROOT = Path(__file__).resolve().parents[2]
# Named phases of the suite (a VM start that may build an image first, ...) -> seconds; tests/conftest.py prints
# them at the end of the run.
PHASES: dict[str, float] = {}
BASE_PORT = 2311
SESSION_HOSTS = ("lab1", "lab2")  # the session lab (conftest.py); modules add lab3.. of other flavors


@dataclass(frozen=True)
class Lab:
    inventory: Path
    state: Path
    env: dict[str, str]

    def provision(
        self, *args: str, check: bool = False, timeout: float = 1800, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run provision as a user would; `stdin` feeds it (a password for --password-stdin, a file for tee)."""
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "provision", *args],
            cwd=ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        # The command line as every report below shows it: a password in a test's URL masked.
        shown = re.sub(r"://([^:/@\s]+):[^@\s]+@", r"://\1:***@", " ".join(args))
        timings = os.environ.get("PROVISION_TEST_TIMINGS")
        if timings:  # where the suite's time goes, one line per call (scripts/test.sh sets it)
            with open(timings, "a") as log:
                log.write(f"{time.monotonic() - started:7.1f}s  provision {shown}\n")
        # Shown by pytest only when a test fails: what the user would have seen.
        print(f"$ provision {shown}\n{proc.stdout}\n{proc.stderr}\n(exit {proc.returncode})")
        if check and proc.returncode != 0:
            raise AssertionError(f"provision {shown} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def ssh(self, host: str, command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.provision("lab", "ssh", host, "--", command, stdin=stdin)

    def pause(self, *hosts: str) -> None:
        """Stop the VMs' CPUs.  An idle TCG VM costs a quarter of a host core (measured: 23-26%; with Docker
        and two replicas, 50-65%); a module that does not use a host lets the others have that CPU."""
        for host in hosts:
            with qmp(self.state / "hosts" / host / "qmp.sock", timeout=10.0) as monitor:
                monitor.call("stop")

    def resume(self, *hosts: str) -> None:
        """Let paused VMs run again, with the wall clock they missed while paused (their own stood still)."""
        for host in hosts:
            directory = self.state / "hosts" / host
            with qmp(directory / "qmp.sock", timeout=10.0) as monitor:
                monitor.call("cont")
            with qga(directory / "qga.sock", timeout=60.0) as agent:
                result = guest_exec(agent, ["/bin/date", "-s", f"@{time.time():.3f}"])
            assert result.rc == 0, f"{host}: setting the clock after a pause: {result.stderr}"

    def sh(self, host: str, command: str, stdin: str = "") -> str:
        """Run a command on a lab host that must succeed, and return its stdout; stdin is empty unless given."""
        proc = self.ssh(host, command, stdin=stdin)
        assert proc.returncode == 0, f"{host}: {command}: {proc.stdout}{proc.stderr}"
        return proc.stdout


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a named phase of the suite (summed when it repeats)."""
    started = time.monotonic()
    try:
        yield
    finally:
        PHASES[name] = PHASES.get(name, 0.0) + time.monotonic() - started


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


def inventory_with(lab: Lab, tmp_path: Path, host_vars: dict[str, dict]) -> Path:
    """A copy of the lab's inventory with host_vars files for these hosts."""
    inventory = tmp_path / "inventory"
    shutil.copytree(lab.inventory, inventory)
    for host, values in host_vars.items():
        (inventory / "host_vars").mkdir(exist_ok=True)
        (inventory / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(values))
    return inventory
