"""Golden files for the nvidia role: what it installs from where, per platform, byte for byte.

A case is nvidia/<name>/case.yml: `facts` (the host facts that pick the platform), `probe` (what the role's
probe would have found: the running kernel, GPUs, NVSwitches) and `vars` (role variables), and
nvidia/<name>/expected/plan.yml, the role's plan (`__nvidia_plan`: repositories, packages with their version
pins, the headers for the running kernel, holds, the initramfs command, the toolkit's repository and packages)
rendered by the role's own platform task and vars in one ansible-playbook run over every case. A new case is a
new directory, no code. PROVISION_UPDATE_GOLDEN=1 rewrites the expected files; review the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent / "nvidia"
ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(path for path in HERE.iterdir() if (path / "case.yml").is_file())
UPDATE = os.environ.get("PROVISION_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("nvidia-plan")
    hosts = {}
    for case in CASES:
        data = yaml.safe_load((case / "case.yml").read_text())
        hosts[case.name] = {
            **data.get("vars", {}),
            "golden_case": {"facts": data["facts"], "probe": data["probe"]},
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
        }
    inventory = work / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    out = work / "out"
    out.mkdir()
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "playbooks" / "roles"),
        "ANSIBLE_LIBRARY": str(HERE / "library"),
        "ANSIBLE_STRATEGY": "linear",
        "ANSIBLE_CACHE_PLUGIN": "memory",
    }
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", str(inventory), "-e", f"golden_out={out}", str(HERE / "plan.yml"),
        ],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_nvidia_plan_matches_golden(rendered: Path, case: Path) -> None:
    plan = (rendered / f"{case.name}.yml").read_text()
    expected = case / "expected" / "plan.yml"
    if UPDATE:
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(plan)
    assert expected.is_file(), f"{expected} is missing (PROVISION_UPDATE_GOLDEN=1)"
    assert plan == expected.read_text(), f"{case.name}/expected/plan.yml differs (PROVISION_UPDATE_GOLDEN=1)"


def test_every_platform_file_has_a_case() -> None:
    """A platform the role knows (vars/<distribution>-<major>.yml) without a golden file is one nobody reviewed."""
    platforms = {p.stem for p in (ROOT / "playbooks/roles/nvidia/vars").glob("*-*.yml")}
    covered = set()
    for case in CASES:
        facts = yaml.safe_load((case / "case.yml").read_text())["facts"]
        covered.add(f"{facts['distribution']}-{facts['distribution_major_version']}")
    assert platforms <= covered, f"platforms without a golden case: {sorted(platforms - covered)}"
