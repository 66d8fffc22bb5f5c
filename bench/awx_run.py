"""The project as AWX runs it, on a fresh lab host: ansible-runner from a venv holding only `ansible` and
`ansible-runner` (no provision), the checkout as its project (so the root's ansible.cfg applies),
playbooks/site.yml, Ansible's stock strategy.

Starts one plain lab VM (state in a temp dir; stopped afterwards) and runs, in order:
  bare 1    ansible-runner on the fresh host: it must converge it (changed > 0, nothing failed)
  bare 2    ansible-runner again: changed=0
  provision `provision up` on the same host: changed=0 (what the bare runs left is what provision converges to)
and prints each run's wall time and recap; it exits non-zero when one of those does not hold. Issue 18's
acceptance check for "playbooks/ runs without our package". Not in the test suite: two stock-strategy runs of
site.yml on an emulated guest cost about a quarter of an hour of a loaded suite (s30), which the suite's budget
cannot hold; the meta test that forbids `import provision` under playbooks/ is the suite's guard.

    python bench/awx_run.py [--base-port 2461]

The venv is kept in the lab cache (~/.cache/provision/lab/bare-ansible...-ansible-runner...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provision.lab import dirs  # noqa: E402
from testkit.lab import Lab, throwaway_lab  # noqa: E402


def bare_ansible() -> Path:
    """A venv holding only the ansible package and ansible-runner, at the versions provision runs (no provision):
    what AWX's execution environment gives the playbooks."""
    versions = {name: metadata.version(name) for name in ("ansible", "ansible-runner")}
    venv = dirs().cache / ("bare-" + "-".join(f"{name}{v}" for name, v in versions.items()))
    if not (venv / "bin" / "ansible-runner").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        pins = [f"{name}=={v}" for name, v in versions.items()]
        subprocess.run([venv / "bin" / "pip", "install", "-q", *pins], check=True)
    return venv


def bare_run(venv: Path, lab: Lab, work: Path) -> tuple[int, dict, str]:
    """`ansible-runner run` of playbooks/site.yml on the lab's hosts: its exit code, its recap (ansible-runner's
    playbook_on_stats event: processed, ok, changed, failures, dark, ...) and the end of its output."""
    runner = Path(tempfile.mkdtemp(dir=work))
    os.chmod(runner, 0o700)
    (runner / "project").symlink_to(ROOT)  # AWX's project directory: the repository root
    # Only what a user's shell gives ansible: no PROVISION_* or ANSIBLE_* settings of ours, no PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PROVISION_", "PYTHON"))}
    proc = subprocess.run(
        [venv / "bin" / "ansible-runner", "run", runner, "-p", "playbooks/site.yml", "--inventory", lab.inventory],
        env={**env, "PATH": f"{venv / 'bin'}:{env['PATH']}"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    # The recap as ansible-runner records it (its stdout is a terminal's, in colour).
    stats = [
        event["event_data"]
        for path in runner.glob("artifacts/*/job_events/*.json")
        if (event := json.loads(path.read_text()))["event"] == "playbook_on_stats"
    ]
    return proc.returncode, stats[0] if stats else {}, proc.stdout[-3000:] + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-port", type=int, default=2461, help="the lab VM's SSH port (default 2461)")
    args = parser.parse_args()
    venv = bare_ansible()
    # Not from the checkout's root: `python -c` imports from the working directory.
    if subprocess.run([venv / "bin" / "python", "-c", "import provision"], cwd="/", check=False).returncode == 0:
        print(f"{venv} can import provision: not a bare venv", file=sys.stderr)
        return 1
    problems = []
    with tempfile.TemporaryDirectory() as tmp, throwaway_lab(Path(tmp), args.base_port) as lab:
        for name, wants_change in (("bare 1", True), ("bare 2", False)):
            started = time.monotonic()
            code, stats, tail = bare_run(venv, lab, Path(tmp))
            changed = sum(stats.get("changed", {}).values())
            print(f"{name}: {time.monotonic() - started:.1f} s, exit {code}, ok={sum(stats.get('ok', {}).values())} "
                  f"changed={changed} failures={stats.get('failures')} dark={stats.get('dark')}")  # fmt: skip
            if code != 0 or stats.get("failures") or stats.get("dark") or (changed > 0) != wants_change:
                problems.append(f"{name}: exit {code}, changed={changed}\n{tail}")
        started = time.monotonic()
        cli = lab.provision("up", "-i", str(lab.inventory))
        recap = [line for line in cli.stdout.splitlines() if " ok=" in line and " changed=" in line]
        print(f"provision up: {time.monotonic() - started:.1f} s, exit {cli.returncode}: {recap}")
        if cli.returncode != 0 or not recap or " changed=0 " not in recap[-1]:
            problems.append(f"provision up: exit {cli.returncode}\n{cli.stdout[-3000:]}{cli.stderr}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
