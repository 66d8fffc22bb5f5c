"""Benchmark: what `provision up` costs the controller per host, from 1 lab host to N, converging and no-op.

Starts 1 + N plain lab VMs (state in a temp dir; stopped afterwards). lab1 is "one host"; lab2..lab<N+1> are
"the fleet". It runs, in one window:
  converge  `provision up` on fresh hosts: lab1 alone, then the N fleet hosts in one run
  no-op     `provision up` again, alternating 1 host and N hosts, --runs times
and prints, for each: wall time, the controller's CPU seconds (user+sys of the run's processes), host-tasks
(ok+changed+failed+skipped summed over the recap's hosts), CPU per host-task, and the controller memory at
its peak (the sum of the proportional set sizes of the run's process tree, sampled every 0.2 s). Then a
projection for a 200-host fleet from those figures (see README "Fleets"). It asserts nothing.

    python bench/fleet.py [--fleet 3] [--runs 3] [--forks 20]

N is small on purpose: every lab VM is an emulated (TCG) guest, and 2 host cores run about 3 of them busy.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.lab import PROVISION, throwaway_lab  # noqa: E402

RECAP = re.compile(r"^(\S+)\s+ok=(\d+) changed=(\d+) unreachable=(\d+) failed=(\d+) skipped=(\d+)", re.M)


@dataclass(frozen=True)
class Run:
    hosts: int
    wall: float  # seconds
    cpu: float  # controller CPU seconds, user + sys of every process of the run
    host_tasks: int  # ok + changed + failed + skipped over the recap's hosts
    changed: int
    peak_pss: int  # bytes, the run's process tree at its largest

    @property
    def cpu_per_host_task(self) -> float:
        return self.cpu / self.host_tasks if self.host_tasks else math.nan


def _tree_pss(root: int) -> int:
    """The proportional set size of `root` and its descendants (bytes): shared pages counted once in all."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def timed_run(argv: list[str], env: dict[str, str], hosts: int) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.2):
            peak = max(peak, _tree_pss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-2000:]}")
    recap = [tuple(int(n) for n in m.groups()[1:]) for m in RECAP.finditer(stdout)]
    if len(recap) != hosts:
        sys.exit(f"bench: expected a recap line per host ({hosts}), found {len(recap)}:\n{stdout[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(
        hosts=hosts,
        wall=wall,
        cpu=cpu,
        host_tasks=sum(ok + changed + failed + skipped for ok, changed, _, failed, skipped in recap),
        changed=sum(r[1] for r in recap),
        peak_pss=peak,
    )


def show(label: str, run: Run) -> None:
    print(
        f"  {label:<24} {run.wall:7.1f} s  CPU {run.cpu:6.1f} s  {run.host_tasks:5d} host-tasks "
        f"({run.cpu_per_host_task * 1000:5.0f} ms each)  changed {run.changed:4d}  "
        f"peak {run.peak_pss / 2**20:5.0f} MiB",
        flush=True,
    )


def median_run(runs: list[Run]) -> Run:
    return Run(
        hosts=runs[0].hosts,
        wall=statistics.median(r.wall for r in runs),
        cpu=statistics.median(r.cpu for r in runs),
        host_tasks=runs[0].host_tasks,
        changed=max(r.changed for r in runs),
        peak_pss=max(r.peak_pss for r in runs),
    )


def project(one: Run, fleet: Run, forks: int, target: int = 200) -> list[str]:
    """What one controller needs for `target` hosts, from a 1-host and an N-host run of the same kind."""
    per_host_pss = max(0.0, (fleet.peak_pss - one.peak_pss) / max(1, fleet.hosts - 1))
    tasks_per_host = fleet.host_tasks / fleet.hosts
    cpu_per_host_task = fleet.cpu_per_host_task
    cpu_total = cpu_per_host_task * tasks_per_host * target
    cores = os.cpu_count() or 1
    # Hosts run in groups of `forks` per task (linear strategy): a task's wall is one host's (the guest bound
    # one) for every group of forks, unless the controller's CPU is the bound.
    latency_bound = one.wall * math.ceil(target / forks)
    cpu_bound = cpu_total / cores
    return [
        f"  controller CPU: {cpu_per_host_task * 1000:.0f} ms per host-task x {tasks_per_host:.0f} tasks x {target} "
        f"hosts = {cpu_total / 60:.1f} CPU-minutes ({cpu_bound / 60:.1f} min on {cores} cores)",
        f"  controller memory: ~{one.peak_pss / 2**20:.0f} MiB + {per_host_pss / 2**20:.0f} MiB per host run at once; "
        f"forks={forks}: ~{(one.peak_pss + per_host_pss * (min(forks, target) - 1)) / 2**20:.0f} MiB",
        f"  wall: at least max(one host's run x {math.ceil(target / forks)} groups of {forks} = "
        f"{latency_bound / 60:.1f} min, CPU {cpu_bound / 60:.1f} min)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=int, default=3, help="N: hosts in the fleet run (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="no-op runs of each size (default 3)")
    parser.add_argument("--forks", type=int, default=20, help="forks assumed for the projection (ansible.cfg's)")
    args = parser.parse_args()
    fleet_hosts = [f"lab{i}" for i in range(2, args.fleet + 2)]
    with (
        tempfile.TemporaryDirectory(prefix="provision-fleet-bench-") as tmp,
        throwaway_lab(Path(tmp), base_port=2371, hosts=args.fleet + 1) as lab,
    ):
        inventory = str(lab.inventory)

        def up(limit: list[str]) -> Run:
            return timed_run([*PROVISION, "up", "-i", inventory, "--limit", ",".join(limit)], lab.env, len(limit))

        print(f"fleet bench: 1 host (lab1) against {args.fleet} ({', '.join(fleet_hosts)}), plain lab VMs")
        print("converge (fresh hosts):")
        converge_one = up(["lab1"])
        show("1 host", converge_one)
        converge_fleet = up(fleet_hosts)
        show(f"{args.fleet} hosts", converge_fleet)
        print(f"no-op (converged), {args.runs} runs each, alternating:")
        ones, fleets = [], []
        for _ in range(args.runs):
            ones.append(up(["lab1"]))
            show("1 host", ones[-1])
            fleets.append(up(fleet_hosts))
            show(f"{args.fleet} hosts", fleets[-1])
        noop_one, noop_fleet = median_run(ones), median_run(fleets)
        print("medians (no-op):")
        show("1 host", noop_one)
        show(f"{args.fleet} hosts", noop_fleet)
    print(f"\nprojection for 200 hosts, one controller like this one, forks={args.forks}:")
    print(" converge:")
    print("\n".join(project(converge_one, converge_fleet, args.forks)))
    print(" no-op:")
    print("\n".join(project(noop_one, noop_fleet, args.forks)))


if __name__ == "__main__":
    main()
