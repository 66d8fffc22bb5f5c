"""Benchmark: pulling a 2 GiB model file onto a lab VM's data disk, the weights role versus `curl -o`.

Prints throughputs (median of --runs) and ratios; it asserts nothing.  Both sides fetch the same file
from the same server on this machine (testkit/fileserver.py, sendfile) through qemu's user network to
the same disk of the same VM, alternating, so load affects both alike.  Our figure includes the sha256
(computed while streaming) and the fsync before the rename; curl's has no hashing and no fsync.  Our time
is the module's own (from its summary line), curl's is its time_total: Ansible's per-task overhead is
left out of both.  Two more baselines in the same run: `curl -o` then `sha256sum` in the VM (what the
same guarantee costs by hand), and both tools on this machine's loopback, where the CPU is not emulated
(the lab's TCG VM runs sha256 at ~50 MiB/s, so there hashing competes with receiving for the CPU).

    python bench/weights_pull.py [--runs 3] [--size-mib 2048]

It starts a one-VM lab of its own (state in a temp dir) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
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

from provision.weights import lockfile  # noqa: E402
from testkit.fileserver import FileServer, make_file  # noqa: E402
from testkit.lab import PROVISION, throwaway_lab  # noqa: E402

MOUNT = "/srv/models"
MODULE = ROOT / "playbooks/roles/weights/library/weights_pull.py"


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
    curl_sha: list[float] = []
    local_ours: list[float] = []
    local_curl: list[float] = []
    try:
        make_file(tmp / "served/bench/model.safetensors", size, seed=7)
        lock = lockfile.from_directory(tmp / "served/bench", "bench", "r1")
        with FileServer(tmp / "served") as server, throwaway_lab(tmp, base_port=2361) as lab:
            env, inventory = lab.env, lab.inventory
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
                        f"sudo curl -sS -o {MOUNT}/curl.bin -w '%{{time_total}} ' {url};"
                        f" t=$(date +%s%N); sudo sha256sum {MOUNT}/curl.bin >/dev/null; echo $(( $(date +%s%N) - t ));"
                        f" sudo rm -f {MOUNT}/curl.bin; sync",
                    ],
                    env,
                )
                fetched, hashed_ns = out.split()
                curl_seconds = float(fetched.replace(",", "."))
                curl.append(size / curl_seconds)
                curl_sha.append(size / (curl_seconds + int(hashed_ns) / 1e9))
                local_ours.append(local_pull(tmp, lock, server.port))
                local_curl.append(local_curl_o(tmp, server.port))
                print(
                    f"  VM: ours {ours[-1] / 2**20:6.1f}  curl -o {curl[-1] / 2**20:6.1f}"
                    f"  curl -o + sha256sum {curl_sha[-1] / 2**20:6.1f} MiB/s (ratio {ours[-1] / curl[-1]:.2f});"
                    f"  loopback: ours {local_ours[-1] / 2**20:6.1f}  curl -o {local_curl[-1] / 2**20:6.1f} MiB/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    o, c, cs = statistics.median(ours), statistics.median(curl), statistics.median(curl_sha)
    lo, lc = statistics.median(local_ours), statistics.median(local_curl)
    print(f"medians of {args.runs}, {args.size_mib} MiB:")
    print(f"VM data disk: weights pull (sha256 inline, fsync) {o / 2**20:.1f} MiB/s")
    paired = statistics.median(a / b for a, b in zip(ours, curl, strict=True))
    print(f"              curl -o (no hash)                   {c / 2**20:.1f} MiB/s   ratio {o / c:.2f}"
          f" (median of the runs' own ratios {paired:.2f})")  # fmt: skip
    print(f"              curl -o, then sha256sum             {cs / 2**20:.1f} MiB/s   ratio {o / cs:.2f}")
    print(f"loopback:     weights pull (sha256 inline, fsync) {lo / 2**20:.1f} MiB/s")
    print(f"              curl -o (no hash)                   {lc / 2**20:.1f} MiB/s   ratio {lo / lc:.2f}")


def local_pull(tmp: Path, lock: lockfile.Lock, port: int) -> float:
    """Bytes per second of the module itself on this machine, from the server on loopback to a temp dir."""
    dest = tmp / "local/bench"
    shutil.rmtree(dest.parent, ignore_errors=True)
    files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in lock.files]
    model = {"name": "bench", "dest": str(dest), "model": "bench", "revision": "r1", "files": files,
             "mirrors": [f"http://127.0.0.1:{port}/m1/bench/{{path}}"]}  # fmt: skip
    args = tmp / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"models": [model], "progress_file": str(tmp / "p.json")}}))
    out = run([sys.executable, str(MODULE), str(args)], dict(os.environ))
    seconds = float(re.search(r"in (\d+\.\d+)s", json.loads(out)["summary"]).group(1))  # type: ignore[union-attr]
    shutil.rmtree(dest.parent, ignore_errors=True)
    return sum(f.size for f in lock.files) / seconds


def local_curl_o(tmp: Path, port: int) -> float:
    target = tmp / "curl.bin"
    out = run(["curl", "-sS", "-o", str(target), "-w", "%{speed_download}",
               f"http://127.0.0.1:{port}/m1/bench/model.safetensors"], dict(os.environ))  # fmt: skip
    target.unlink()
    return float(out.replace(",", "."))


if __name__ == "__main__":
    main()
