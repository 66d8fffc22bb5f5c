"""The Ansible project as AWX and ansible-runner use it without provision: ansible.cfg at the repository root,
the collections pinned to what the ansible package bundles, and an execution environment ansible-builder reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import yaml

from provision import paths

BIN = Path(sys.executable).parent
ROOT = paths.ROOT


def pyproject_pins() -> dict[str, str]:
    """pyproject.toml's dependencies: name -> its version specifier."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m[1]: m[2] for m in (re.match(r"([A-Za-z0-9_.-]+)(.*)", d) for d in dependencies) if m}


def ansible_env() -> dict[str, str]:
    """The environment of someone who runs ansible by hand: none of our ANSIBLE_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}


def test_ansible_run_from_the_repository_root_reads_the_projects_ansible_cfg() -> None:
    """AWX runs ansible from the project's root, as a user does with `ansible-playbook playbooks/site.yml`."""
    assert paths.ANSIBLE_CFG == ROOT / "ansible.cfg"
    proc = subprocess.run(
        [BIN / "ansible-config", "dump", "--only-changed", "--format", "json"],
        cwd=ROOT, env=ansible_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    settings = {s["name"]: s["value"] for s in json.loads(proc.stdout) if "name" in s}  # plugin sections have none
    assert settings["CONFIG_FILE"] == str(ROOT / "ansible.cfg")
    assert settings["DEFAULT_ROLES_PATH"] == [str(ROOT / "playbooks/roles")]
    assert settings["DEFAULT_FILTER_PLUGIN_PATH"] == [str(ROOT / "playbooks/filter_plugins")]
    assert not (ROOT / "playbooks/ansible.cfg").exists(), "a second ansible.cfg would win when run from playbooks/"


@cache
def installed_collections() -> dict[str, str]:
    proc = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "list", "--format", "json"],
        env=ansible_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {name: c["version"] for found in json.loads(proc.stdout).values() for name, c in found.items()}


def test_the_collection_pins_are_the_versions_the_ansible_package_bundles() -> None:
    pins = yaml.safe_load((ROOT / "collections/requirements.yml").read_text())["collections"]
    installed = installed_collections()
    assert {p["name"]: p["version"] for p in pins} == {p["name"]: installed.get(p["name"]) for p in pins}


def test_every_collection_the_playbooks_use_is_pinned() -> None:
    pinned = {p["name"] for p in yaml.safe_load((ROOT / "collections/requirements.yml").read_text())["collections"]}
    fqcn = re.compile(r"\b([a-z_]+\.[a-z_]+)\.[a-z_]+\b")
    installed = installed_collections()
    used = {
        m[1]
        for path in (ROOT / "playbooks").rglob("*.yml")
        for m in fqcn.finditer(path.read_text())
        if m[1] in installed and m[1] != "ansible.builtin"
    }
    assert used, "found no collection in the playbooks: the pattern is broken"
    assert used <= pinned, f"used but not in collections/requirements.yml: {sorted(used - pinned)}"


def test_the_execution_environment_pins_what_pyproject_pins() -> None:
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    pins = pyproject_pins()
    deps = ee["dependencies"]
    assert ee["version"] == 3
    assert deps["ansible_core"]["package_pip"] == "ansible-core" + pins["ansible-core"]
    assert deps["ansible_runner"]["package_pip"] == "ansible-runner" + pins["ansible-runner"]
    assert deps["python"] == ["mitogen" + pins["mitogen"]]
    assert deps["galaxy"] == "collections/requirements.yml"


def test_ansible_builder_makes_a_build_context_with_our_pins(tmp_path: Path) -> None:
    context = tmp_path / "context"
    proc = subprocess.run(
        [BIN / "ansible-builder", "create", "--file", ROOT / "execution-environment.yml", "--context", context,
         "--output-filename", "Containerfile"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pins = pyproject_pins()
    containerfile = (context / "Containerfile").read_text()
    assert f'ARG ANSIBLE_INSTALL_REFS="ansible-core{pins["ansible-core"]} ansible-runner{pins["ansible-runner"]}"' in (
        containerfile
    )
    assert (context / "_build/requirements.txt").read_text().split() == ["mitogen" + pins["mitogen"]]
    built = yaml.safe_load((context / "_build/requirements.yml").read_text())
    assert built == yaml.safe_load((ROOT / "collections/requirements.yml").read_text())


def test_a_run_whose_tags_leave_out_the_roles_that_take_a_handed_over_fact_still_validates_them(
    tmp_path: Path,
) -> None:
    """The plays hand nginx and Prometheus the inference role's endpoints, a fact its entry point sets under their
    tags. A role's argument validation runs whatever the tags (`provision up --tags ssh,firewall` on a gateway):
    there the fact was never set, and the handed-over value must still be one (s30: every such run failed)."""
    inventory = tmp_path / "hosts.yml"
    groups = {"gateway": {"hosts": {"gw1": None}}, "monitoring": {"hosts": {"gw1": None}}}
    inventory.write_text(
        yaml.safe_dump({"all": {"hosts": {"gw1": {"ansible_connection": "local"}}, "children": groups}})
    )
    for playbook in ("serving.yml", "monitoring.yml"):
        proc = subprocess.run(
            [BIN / "ansible-playbook", "-i", inventory, paths.PLAYBOOKS / playbook, "--check", "--tags", "ssh",
             "-e", f"ansible_python_interpreter={sys.executable}"],
            cwd=ROOT, env={**ansible_env(), "ANSIBLE_CACHE_PLUGIN": "memory"}, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 0, playbook + ": " + proc.stdout[-3000:] + proc.stderr
        assert re.search(r"gw1\s+: ok=[1-9]", proc.stdout), proc.stdout  # the validation ran, and passed
