"""provision installed from its wheel, outside the checkout, as `pipx install .` or `pip install <wheel>` leaves it.

Once per session: the working tree's wheel is built, and a fresh virtualenv outside the repository gets it with
pip. Its dependencies are the development environment's (a .pth line names that site-packages, and the commands
they install, ansible-playbook and the rest, are written into the new venv's bin/ for its own interpreter):
installing Ansible again would cost more than the rest of this module. Every command then runs from /tmp with
only PATH and HOME in its environment, so nothing of the checkout (its directory, PROVISION_HOME) can help.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
from labtools import ROOT, Lab, phase, recap

from testkit.wheel import build_wheel


@dataclass(frozen=True)
class Installed:
    venv: Path
    data: Path  # where the wheel put the playbooks, templates and example inventories

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ["HOME"]}
        proc = subprocess.run(
            [str(self.venv / "bin" / "provision"), *args],
            cwd="/tmp", env=env, capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
        print(f"$ provision {' '.join(args)}\n{proc.stdout}\n{proc.stderr}\n(exit {proc.returncode})")
        return proc


def _console_scripts(venv: Path) -> None:
    """The dependencies' commands (ansible-playbook, ...) for the new venv's interpreter, as pip would write them."""
    ours = Path(sys.executable).parent
    for script in sorted(ours.glob("ansible*")):
        lines = script.read_text(errors="replace").splitlines(keepends=True)
        if not lines or not lines[0].startswith("#!") or str(ours) not in lines[0]:
            continue
        target = venv / "bin" / script.name
        target.write_text(f"#!{venv / 'bin' / 'python'}\n{''.join(lines[1:])}")
        target.chmod(0o755)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    with phase("wheel built and installed in a fresh venv"):
        wheel = build_wheel(work)
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())
        (site / "zz_provision_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True)
        _console_scripts(venv)
    return Installed(venv=venv, data=site / "provision" / "_data")


def test_the_wheel_carries_the_ansible_project(installed: Installed) -> None:
    for name in ("ansible.cfg", "playbooks/site.yml", "templates/nginx/nginx.conf.j2", "inventories/gcp"):
        assert (installed.data / name).exists(), f"the wheel has no {name}"
    assert not (installed.data / "inventories/lab/hosts.yml").exists(), "a lab's own inventory went into the wheel"


def test_help_works_from_anywhere(installed: Installed) -> None:
    proc = installed.run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: provision" in proc.stdout


def test_render_an_example_inventory_from_anywhere(installed: Installed) -> None:
    proc = installed.run("render", "-i", "inventories/gcp", "--host", "gcp-l4-1")
    assert proc.returncode == 0, proc.stderr
    assert "# ==> inference.service <==" in proc.stdout
    assert "ExecStart=/usr/bin/docker run" in proc.stdout


def test_up_check_runs_the_installed_playbooks(installed: Installed, lab: Lab, converged: object) -> None:
    proc = installed.run("up", "-i", str(lab.inventory), "--limit", "lab1", "--check", "-v")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Using {installed.data / 'ansible.cfg'} as config file" in proc.stdout
    assert str(ROOT / "playbooks") not in proc.stdout, "the checkout's playbooks were used"
    assert recap(proc.stdout)["lab1"]["failed"] == 0
