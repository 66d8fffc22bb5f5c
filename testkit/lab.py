"""A throwaway lab for the tests and the benchmarks: VMs started by `provision lab up` with their state and
inventory under a directory of their own, apart from any lab the user runs, on ports of their own, and stopped
afterwards with nothing left running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provision.lab.qemu import guest_exec, qga, qmp

ROOT = Path(__file__).resolve().parents[1]
PROVISION = [sys.executable, "-m", "provision"]


def timed_calls(lines: Iterable[str]) -> list[tuple[float, str]]:
    """The provision calls of a PROVISION_TEST_TIMINGS file (Lab.provision appends one line per call), slowest
    first. Lanes append to one file at once: a blank or cut-short line is left out, not fatal to the summary."""
    calls = []
    for line in lines:
        seconds, separator, call = line.strip().partition("s  ")
        try:
            if separator and call:
                calls.append((float(seconds), call))
        except ValueError:
            continue
    return sorted(calls, key=lambda timed: -timed[0])


@dataclass(frozen=True)
class Lab:
    """A lab apart from the user's: its own state directory (PROVISION_LAB_STATE in `env`) and inventory."""

    inventory: Path
    state: Path
    env: dict[str, str]

    def provision(
        self, *args: str, check: bool = False, timeout: float = 1800, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run provision as a user would; `stdin` feeds it (a password for --password-stdin, a file for tee)."""
        started = time.monotonic()
        proc = subprocess.run(
            [*PROVISION, *args],
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
            one_line = shown.replace("\n", "\\n")  # a multi-line argument (a script for lab ssh) kept on its line
            with open(timings, "a") as log:
                log.write(f"{time.monotonic() - started:7.1f}s  provision {one_line}\n")
        # Shown by pytest only when a test fails: what the user would have seen.
        print(f"$ provision {shown}\n{proc.stdout}\n{proc.stderr}\n(exit {proc.returncode})")
        if check and proc.returncode != 0:
            raise AssertionError(f"provision {shown} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def ssh(self, host: str, command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.provision("lab", "ssh", host, "--", command, stdin=stdin)

    def pause(self, *hosts: str) -> None:
        """Stop the VMs' CPUs.  An idle TCG VM costs host CPU (a plain one 7-8% of a core on qemu 10, 23-26% on
        qemu 7.2 with two vCPUs; with Docker and two replicas, 50-65% on 7.2); a module that does not use a host
        lets the others have that CPU."""
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

    @classmethod
    def under(cls, base: Path) -> Lab:
        """A lab whose state and inventory (with the lab's group_vars) live under `base`."""
        inventory = base / "inventory"
        inventory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ROOT / "inventories/lab/group_vars", inventory / "group_vars", dirs_exist_ok=True)
        state = base / "state"
        return cls(inventory=inventory, state=state, env={**os.environ, "PROVISION_LAB_STATE": str(state)})

    def up(self, hosts: int, base_port: int, flavor: str = "plain") -> None:
        """Start lab1..lab<hosts> (those not running yet, of `flavor`) and write the lab's inventory."""
        self.provision(
            "lab", "up", "--hosts", str(hosts), "--flavor", flavor, "--base-port", str(base_port),
            "--inventory-out", str(self.inventory / "hosts.yml"), check=True,
        )  # fmt: skip

    def down(self) -> None:
        """Stop the lab; no qemu process of it may be left running."""
        self.provision("lab", "down")
        leftover = our_qemu_pids(self.state)
        assert not leftover, f"lab down left qemu processes running: {leftover}"


@contextmanager
def throwaway_lab(base: Path, base_port: int, hosts: int = 1, flavor: str = "plain") -> Iterator[Lab]:
    """lab1..lab<hosts> of `flavor` with their state and inventory under `base`, stopped on the way out."""
    lab = Lab.under(base)
    try:
        lab.up(hosts, base_port, flavor)
        yield lab
    finally:
        lab.down()


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
