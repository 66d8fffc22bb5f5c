"""Benchmark: non-streamed chat completions through nginx versus direct to one replica, on a served lab host.

Runs provision/smoke/llm_client.py on the host itself (loopback only), alternating nginx and direct rounds so
machine load affects both alike, each bounded in time and count; prints requests per second and p50/p99
latency of each side, and the ratios. Also the median time to first token of 20 streamed replies each way.
It asserts nothing.

    python bench/serving.py --host lab1 [--seconds 10] [--concurrency 8] [--rounds 2]

The host must be served already (see README, "Serving"); PROVISION_LAB_STATE selects the lab.
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provision.smoke import llm_client  # noqa: E402

CLIENT = base64.b64encode((ROOT / "provision/smoke/llm_client.py").read_bytes()).decode()


def on_host(host: str, *args: str) -> dict:
    command = f"echo {CLIENT} | base64 -d | python3 - {' '.join(args)}"
    argv = [sys.executable, "-m", "provision", "lab", "ssh", host, "--", command]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(args[:2])} on {host} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return llm_client.answer(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="lab1")
    parser.add_argument("--nginx", default="http://127.0.0.1:80")
    parser.add_argument("--direct", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    load = ["--seconds", str(args.seconds), "--requests", str(args.requests), "--concurrency", str(args.concurrency),
            "--tokens", "1"]  # fmt: skip
    results: dict[str, list[dict]] = {"nginx": [], "direct": []}
    for _ in range(args.rounds):
        for side in ("direct", "nginx"):
            url = args.direct if side == "direct" else args.nginx
            results[side].append(on_host(args.host, "load", url, *load))
    ttft = {side: on_host(args.host, "ttft", url, "--repeat", "20", "--tokens", "4")
            for side, url in (("direct", args.direct), ("nginx", args.nginx))}  # fmt: skip
    summary = {}
    for side, runs in results.items():
        ok = sum(r["ok"] for r in runs)
        wall = sum(r["wall"] for r in runs)
        summary[side] = {
            "rps": ok / wall,
            "p50": sorted(r["p50"] for r in runs)[len(runs) // 2],
            "p99": max(r["p99"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "ttft": ttft[side]["median"],
        }
        s = summary[side]
        print(f"{side:7} {s['rps']:7.1f} req/s  p50 {s['p50'] * 1000:6.1f} ms  p99 {s['p99'] * 1000:6.1f} ms  "
              f"errors {s['errors']}  TTFT median {s['ttft'] * 1000:6.1f} ms")  # fmt: skip
    n, d = summary["nginx"], summary["direct"]
    print(f"nginx/direct: rps x{n['rps'] / d['rps']:.2f}, p50 x{n['p50'] / d['p50']:.2f}, "
          f"p99 x{n['p99'] / d['p99']:.2f}, TTFT {1000 * (n['ttft'] - d['ttft']):+.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
