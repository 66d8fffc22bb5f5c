"""A run through the library alone (scripts/run_play.py: provision.play, no Click) gets the outcome `provision up`
gets on the same hosts: the exit code, the failed and the unreachable hosts.

The CLI's run here is also the suite's check that an unreachable host gets its own exit code (4) while the
reachable one converges without failing: one run for both (test_1 had an identical run of its own)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from labtools import ROOT, Lab, recap

Runs = tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]


def test_a_run_through_the_library_gets_the_outcome_of_provision_up(lab: Lab, converged: Runs, tmp_path: Path) -> None:
    # lab1 (converged: a cheap run) and a host nobody answers for, so the outcome is not simply "OK".
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    inventory = tmp_path / "inventory"
    shutil.copytree(lab.inventory, inventory)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["lab"]["hosts"]["ghost"] = {"ansible_host": "127.0.0.1", "ansible_port": dead_port}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    selection = ("--limit", "lab1,ghost", "--tags", "base")

    cli = lab.provision("up", "-i", str(inventory), *selection)
    stats = recap(cli.stdout)
    by_cli = {
        "code": cli.returncode,
        "failed": sorted(host for host, s in stats.items() if s["failed"]),
        "unreachable": sorted(host for host, s in stats.items() if s["unreachable"]),
    }

    started = time.monotonic()
    library = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_play.py"), str(inventory / "hosts.yml"), *selection],
        cwd=ROOT, env=lab.env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    print(f"library run: {time.monotonic() - started:.1f} s\n{library.stdout}\n{library.stderr}")
    assert "the library imported click" not in library.stderr, library.stderr
    *lines, last = library.stdout.splitlines()
    outcome = json.loads(last)
    assert library.returncode == outcome["code"], library.stderr
    assert {key: outcome[key] for key in by_cli} == by_cli == {"code": 4, "failed": [], "unreachable": ["ghost"]}
    assert outcome["message"].startswith("unreachable: ghost")
    # The same progress lines the CLI shows, from the library's callback.
    assert any(line.split()[:2] == ["ok", "lab1"] for line in lines), library.stdout
