"""Benchmark: a no-change re-run of site.yml on one converged lab host, ours versus stock Ansible.

Prints wall times (median of --runs) and the ratio; it asserts nothing.  Both sides run in the same
process, on the same host, alternating, so machine load affects both alike.

    python bench/converged_rerun.py [--runs 3] [--inventory DIR]

Without --inventory it starts a one-VM lab of its own (state in a temp dir) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from lab import PROVISION, ROOT, one_vm_lab

BIN = Path(sys.executable).parent


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(
            f"bench: {' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inventory", type=Path)
    args = parser.parse_args()
    provision = PROVISION
    tmp = Path(tempfile.mkdtemp(prefix="provision-bench-"))
    with ExitStack() as stack:
        if args.inventory is None:
            env, inventory = stack.enter_context(one_vm_lab(tmp, base_port=2351))
        else:
            env, inventory = dict(os.environ), args.inventory
        measure(args, provision, env, inventory, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, provision: list[str], env: dict[str, str], inventory: Path, tmp: Path) -> None:
    print("converging once ...", flush=True)
    timed([*provision, "up", "-i", str(inventory)], env)

    ours_cmd = [*provision, "up", "-i", str(inventory)]
    # Stock: the same playbooks without our minimal fact subset, so facts are gathered in full.
    stock_playbooks = tmp / "stock-playbooks"
    shutil.copytree(ROOT / "playbooks", stock_playbooks, ignore=shutil.ignore_patterns("ansible.cfg"))
    for play in stock_playbooks.glob("*.yml"):
        lines = play.read_text().splitlines(keepends=True)
        play.write_text("".join(line for line in lines if not line.lstrip().startswith("gather_subset:")))
    stock_cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(stock_playbooks / "site.yml")]
    stock_env = {
        **env,
        "ANSIBLE_CONFIG": str(ROOT / "bench/stock-ansible.cfg"),
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",  # no ControlPersist
        "ANSIBLE_PIPELINING": "False",
        "ANSIBLE_GATHERING": "implicit",
    }
    ours, stock = [], []
    for i in range(args.runs):
        ours.append(timed(ours_cmd, env))
        stock.append(timed(stock_cmd, stock_env))
        print(
            f"run {i + 1}: provision up {ours[-1]:.1f}s, stock ansible-playbook {stock[-1]:.1f}s",
            flush=True,
        )
    o, s = statistics.median(ours), statistics.median(stock)
    print(f"\nno-change re-run of site.yml, 1 converged lab host, median of {args.runs}:")
    print(f"  provision up (pipelining, ControlPersist, cached minimal facts): {o:6.1f} s")
    print(f"  stock ansible-playbook (no pipelining, no ControlPersist, full facts): {s:6.1f} s")
    print(f"  ratio stock/ours: {s / o:.2f}x")


if __name__ == "__main__":
    main()
