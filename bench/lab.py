"""What the benchmarks share: a one-VM lab of their own, apart from the user's, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROVISION = [sys.executable, "-m", "provision"]


@contextmanager
def one_vm_lab(tmp: Path, base_port: int) -> Iterator[tuple[dict[str, str], Path]]:
    """Start lab1 with its state under tmp; yield (environment for provision, inventory directory)."""
    with lab_vms(tmp, base_port) as started:
        yield started


@contextmanager
def lab_vms(
    tmp: Path, base_port: int, hosts: int = 1, flavor: str = "plain", serving: bool = False
) -> Iterator[tuple[dict[str, str], Path]]:
    """Start lab1..labN with their state under tmp; yield (environment for provision, inventory directory).

    With `serving`, lab1 is in the inference and gateway groups (the lab's serving.yml) and serves the demo
    image (`provision lab demo-image`); use the docker flavor then.
    """
    env = {**os.environ, "PROVISION_LAB_STATE": str(tmp / "state")}
    inventory = tmp / "inventory"
    inventory.mkdir(exist_ok=True)
    shutil.copytree(ROOT / "inventories/lab/group_vars", inventory / "group_vars", dirs_exist_ok=True)
    up = ["lab", "up", "--hosts", str(hosts), "--flavor", flavor, "--base-port", str(base_port),
          "--inventory-out", str(inventory / "hosts.yml")]  # fmt: skip
    try:
        subprocess.run([*PROVISION, *up], cwd=ROOT, env=env, check=True)
        if serving:
            shutil.copy(ROOT / "inventories/lab/serving.yml", inventory / "serving.yml")
            demo = ["lab", "demo-image", "--vars-out", str(inventory / "group_vars/inference.yml")]
            subprocess.run([*PROVISION, *demo], cwd=ROOT, env=env, check=True)
        yield env, inventory
    finally:
        subprocess.run([*PROVISION, "lab", "down"], cwd=ROOT, env=env, capture_output=True, check=False)
