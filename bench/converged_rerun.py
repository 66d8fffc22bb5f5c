"""Benchmark: a no-change re-run of site.yml on converged lab hosts, four ways, in one window.

For a plain host (base, disks, ssh, firewall, ...) and a serving host (Docker, a demo replica, nginx):
  stock    `ansible-playbook` with Ansible's defaults (no pipelining, ControlPersist 60 s, full facts every run)
  linear   `provision up --strategy linear` (our settings, Ansible's own strategy)
  mitogen  `provision up` (the default: Mitogen)
  floor    one remote python3, over one new SSH connection, that stats every file and reads every unit
           state the converged run looked at (taken from that run's own events): what no tool can beat
Each is run --runs times, alternating, so machine load affects all alike; prints medians, the ratios to
stock, and the controller's CPU seconds per host per run (user+sys of the runs' processes). It asserts
nothing.

    python bench/converged_rerun.py [--runs 3] [--only plain|serving] [--inventory DIR --plain HOST --serving HOST]

Without --inventory it starts a lab of its own (lab1: docker flavor, serving the demo image; lab2: a plain
host; state in a temp dir) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.lab import PROVISION, throwaway_lab  # noqa: E402

BIN = Path(sys.executable).parent
WAYS = ("stock", "linear", "mitogen", "floor")
# The floor: one python3 that stats the paths and asks systemd about the units, printing a line per thing.
FLOOR = """\
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
for path in spec["paths"]:
    try:
        st = os.stat(path)
        print(path, st.st_size, st.st_mtime_ns, oct(st.st_mode))
    except OSError as exc:
        print(path, exc.errno)
if spec["units"]:
    print(subprocess.run(["systemctl", "show", "-p", "Id,ActiveState,UnitFileState", *spec["units"]],
                         capture_output=True, text=True).stdout)
"""


def timed(argv: list[str], env: dict[str, str], converged: bool = True) -> tuple[float, float]:
    """(wall seconds, controller CPU seconds) of one command that must succeed (and change nothing)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        what = " ".join(argv[:4])
        sys.exit(f"bench: {what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    changed = [int(n) for n in re.findall(r"\bchanged=(\d+)", proc.stdout)]
    if converged and (not changed or any(changed)):
        sys.exit(f"bench: {' '.join(argv[:4])} changed something; the hosts are not converged:\n{proc.stdout[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def stock_setup(tmp: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """The same playbooks without our ansible.cfg and minimal fact subset: Ansible's defaults throughout."""
    playbooks = tmp / "stock-playbooks"
    shutil.copytree(ROOT / "playbooks", playbooks, dirs_exist_ok=True)
    # Roles find the shared templates beside the playbooks directory (playbooks/../templates).
    shutil.copytree(ROOT / "templates", tmp / "templates", dirs_exist_ok=True)
    for play in playbooks.glob("*.yml"):
        lines = play.read_text().splitlines(keepends=True)
        play.write_text("".join(line for line in lines if not line.lstrip().startswith("gather_subset:")))
    stock_env = {
        **env,
        "ANSIBLE_CONFIG": str(ROOT / "bench/stock-ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(playbooks / "roles"),
    }
    return playbooks / "site.yml", stock_env


def checked_things(inventory: Path, host: str, env: dict[str, str]) -> dict[str, list[str]]:
    """The files and units a converged run of `host` looked at, from that run's own events (kept artifacts)."""
    proc = subprocess.run(
        [*PROVISION, "up", "-i", str(inventory), "--limit", host, "--keep-artifacts"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    kept = Path(proc.stdout.rsplit("artifacts kept in ", 1)[1].split()[0])
    paths, units = set(), set()
    try:
        for event_file in kept.glob("artifacts/*/job_events/*.json"):
            event = json.loads(event_file.read_text())
            if event.get("event") not in ("runner_on_ok", "runner_item_on_ok"):
                continue
            data = event["event_data"]
            res, action = data.get("res") or {}, str(data.get("task_action", ""))
            args = (res.get("invocation") or {}).get("module_args") or {}
            for where in (res, args, res.get("stat") or {}):
                for key in ("path", "dest"):
                    if isinstance(where.get(key), str) and where[key].startswith("/"):
                        paths.add(where[key])
            if action.endswith(("systemd", "systemd_service", "service")):
                units.update(name for name in (res.get("name"), args.get("name")) if isinstance(name, str))
    finally:
        shutil.rmtree(kept, ignore_errors=True)
    return {"paths": sorted(paths), "units": sorted(units)}


def floor_argv(inventory: Path, host: str, spec: dict[str, list[str]]) -> list[str]:
    """ssh with a new connection (no ControlMaster), running the probe in one python3."""
    hostvars = json.loads(
        subprocess.run(
            [str(BIN / "ansible-inventory"), "-i", str(inventory), "--host", host],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    extra = hostvars.get("ansible_ssh_common_args", "").split()
    return [
        "ssh", "-o", "ControlMaster=no", "-o", "BatchMode=yes", *extra,
        "-p", str(hostvars.get("ansible_port", 22)),
        *(["-i", hostvars["ansible_ssh_private_key_file"]] if "ansible_ssh_private_key_file" in hostvars else []),
        f"{hostvars.get('ansible_user', 'root')}@{hostvars.get('ansible_host', host)}",
        "sudo python3 -c " + shlex.quote(FLOOR) + " " + shlex.quote(json.dumps(spec)),
    ]  # fmt: skip


def measure(args: argparse.Namespace, env: dict[str, str], inventory: Path, tmp: Path) -> None:
    print("converging once ...", flush=True)
    subprocess.run([*PROVISION, "up", "-i", str(inventory)], cwd=ROOT, env=env, check=True, capture_output=True)
    stock_site, stock_env = stock_setup(tmp, env)
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for kind, host in (("plain", args.plain), ("serving", args.serving)):
        if args.only and kind != args.only:
            continue
        spec = checked_things(inventory, host, env)
        print(f"{kind} host {host}: the converged run looked at {len(spec['paths'])} files, {len(spec['units'])} units")
        argv = {
            "stock": [str(BIN / "ansible-playbook"), "-i", str(inventory), "--limit", host, str(stock_site)],
            "linear": [*PROVISION, "up", "-i", str(inventory), "--limit", host, "--strategy", "linear"],
            "mitogen": [*PROVISION, "up", "-i", str(inventory), "--limit", host],
            "floor": floor_argv(inventory, host, spec),
        }
        runs: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
        for i in range(args.runs):
            for way in WAYS:
                runs[way].append(timed(argv[way], stock_env if way == "stock" else env, converged=way != "floor"))
            line = ", ".join(f"{way} {runs[way][-1][0]:.1f}s" for way in WAYS)
            print(f"  run {i + 1}: {line}", flush=True)
        results[kind] = runs
    print(f"\nno-change re-run of site.yml on one converged lab host, median of {args.runs}:")
    for kind, runs in results.items():
        stock = statistics.median(w for w, _ in runs["stock"])
        print(f"  {kind} host ({args.plain if kind == 'plain' else args.serving}):")
        for way in WAYS:
            wall = statistics.median(w for w, _ in runs[way])
            cpu = statistics.median(c for _, c in runs[way])
            print(f"    {way:<8} {wall:7.1f} s   {wall / stock:5.2f}x stock   controller CPU {cpu:5.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("plain", "serving"), help="Measure one of the two hosts only.")
    parser.add_argument("--inventory", type=Path)
    parser.add_argument("--plain", default="lab2", help="A converged host outside the serving groups.")
    parser.add_argument("--serving", default="lab1", help="A converged host of the inference and gateway groups.")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="provision-bench-"))
    with ExitStack() as stack:
        if args.inventory is None:
            lab = stack.enter_context(throwaway_lab(tmp, base_port=2351, hosts=2, flavor="docker"))
            # lab1 in the inference and gateway groups (the lab's serving.yml), serving the demo image.
            shutil.copy(ROOT / "inventories/lab/serving.yml", lab.inventory / "serving.yml")
            demo_vars = lab.inventory / "group_vars/inference.yml"
            lab.provision("lab", "demo-image", "--vars-out", str(demo_vars), check=True)
            env, inventory = lab.env, lab.inventory
        else:
            env, inventory = dict(os.environ), args.inventory
        measure(args, env, inventory, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
