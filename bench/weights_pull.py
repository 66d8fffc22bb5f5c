"""Benchmark: pulling a 2 GiB model file onto a lab VM's data disk, the weights role versus `curl -o`.

Prints throughputs (median of --runs) and the ratio; it asserts nothing.  Both sides fetch the same file
from the same server on this machine (provision.lab.fileserver, sendfile) through qemu's user network to
the same disk of the same VM, alternating, so load affects both alike.  Our figure includes the sha256
(computed while streaming) and the fsync before the rename; curl's has no hashing and no fsync.  Our time
is the module's own (from its summary line), curl's is its time_total: Ansible's per-task overhead is
left out of both.

    python bench/weights_pull.py [--runs 3] [--size-mib 2048]

It starts a one-VM lab of its own (state in a temp dir) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab import PROVISION, one_vm_lab  # noqa: E402

from provision.lab.fileserver import FileServer, make_file  # noqa: E402
from provision.weights import lockfile  # noqa: E402

MOUNT = "/srv/models"


def run(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(
            f"bench: {' '.join(argv[:4])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
        )
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=2048)
    args = parser.parse_args()
    provision = PROVISION
    tmp = Path(tempfile.mkdtemp(prefix="provision-bench-"))
    size = args.size_mib << 20
    ours: list[float] = []
    curl: list[float] = []
    try:
        make_file(tmp / "served/bench/model.safetensors", size, seed=7)
        lock = lockfile.from_directory(tmp / "served/bench", "bench", "r1")
        with FileServer(tmp / "served") as server, one_vm_lab(tmp, base_port=2361) as (env, inventory):
            url = f"http://10.0.2.2:{server.port}/m1/bench/model.safetensors"
            (inventory / "bench.lock.yml").write_text(lockfile.dump(lock))
            (inventory / "group_vars/lab.yml").write_text(
                yaml.safe_dump(
                    {
                        "disks_cloud": "aliyun",
                        "disks_devices": [{"cloud_name": "{{ inventory_hostname }}-data", "mount": MOUNT}],
                        "weights_models": [{"name": "bench", "lockfile": "bench.lock.yml"}],
                        "weights_mirrors": [f"http://10.0.2.2:{server.port}/m1/{{model}}/{{path}}"],
                    }
                )
            )
            ssh = [*provision, "lab", "ssh", "lab1", "--"]
            print("provisioning the VM (base, disks) and a first pull ...", flush=True)
            run([*provision, "up", "-i", str(inventory)], env)
            for _ in range(args.runs):
                run([*ssh, f"sudo rm -rf {MOUNT}/bench; sync"], env)
                out = run([*provision, "up", "-i", str(inventory), "--tags", "weights"], env)
                seconds = float(re.search(r"pulled 1 files, \S+ \S+ in (\d+\.\d+)s", out).group(1))  # type: ignore[union-attr]
                ours.append(size / seconds)
                out = run(
                    [
                        *ssh,
                        f"sudo curl -sS -o {MOUNT}/curl.bin -w '%{{time_total}}' {url};"
                        f" sudo rm -f {MOUNT}/curl.bin; sync",
                    ],
                    env,
                )
                curl.append(size / float(out.strip().replace(",", ".")))
                print(f"  ours {ours[-1] / 2**20:7.1f} MiB/s   curl -o {curl[-1] / 2**20:7.1f} MiB/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    o, c = statistics.median(ours), statistics.median(curl)
    print(f"weights pull (sha256 inline, fsync): {o / 2**20:.1f} MiB/s (median of {args.runs})")
    print(f"curl -o (no hash):                   {c / 2**20:.1f} MiB/s (median of {args.runs})")
    print(f"ratio: {o / c:.2f} of curl's throughput")


if __name__ == "__main__":
    main()
