"""Every golden template case rendered twice, by provision (render.py, Ansible's Templar in-process) and by the
real `ansible.builtin.template` module in ansible-playbook on a local connection: the two must match byte for
byte, and match the expected files.

Two kinds of case:
- render/<case>/ (test_render.py): the case's inventory, run through the plays of playbooks/serving.yml,
  monitoring.yml, tunnel.yml and egress.yml, limited to the case's first host, with stand-in roles that have the
  real roles' defaults, vars and templates and only their template task (template_module/<role>.yml); one
  ansible-playbook run takes every case in turn, re-reading the inventory.
- templates/<case>/case.yml: a role template that `provision render` does not show (base, ssh): `role`,
  `template` (the role variable naming it), `facts` (the host's), `vars` (the host's inventory variables) and
  `set_facts` (what the role's earlier tasks set), with expected/<template name without .j2>. All these run in
  one ansible-playbook run (template_module/role_templates.yml), one host per case.
Facts come from the case (golden_facts), never from this machine; nothing connects anywhere. A new case is a new
directory, no code; PROVISION_UPDATE_GOLDEN=1 writes the expected files (review the diff).
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision import argcheck, paths, render, runner
from provision.inventory import Inventory

HERE = Path(__file__).parent
STAND_INS = HERE / "template_module"
RENDER_CASES = sorted(path for path in (HERE / "render").iterdir() if path.is_dir())
ROLE_CASES = sorted(path for path in (HERE / "templates").iterdir() if (path / "case.yml").is_file())
UPDATE = os.environ.get("PROVISION_UPDATE_GOLDEN") == "1"
RenderedCase = Callable[[Path], tuple[Inventory, tuple[render.RenderedFile, ...]]]
STAND_IN_ROLES = tuple(dict.fromkeys(item.role for item in render.RENDERABLE))


def case_of(case: Path) -> dict[str, Any]:
    data = yaml.safe_load((case / "case.yml").read_text(encoding="utf-8"))
    return {"vars": {}, "set_facts": {}, **data}


def expected_name(case: Path) -> str:
    """A role case's expected file: the template's file name without .j2."""
    data = case_of(case)
    return str(argcheck.role_defaults(paths.ROLES / data["role"])[data["template"]]).removesuffix(".j2")


def stand_in_roles(root: Path, tasks: dict[str, Path]) -> Path:
    """Every role with its real defaults, vars and templates and the given tasks (none for the others) as main.yml;
    its other task files are the real ones, for the plays that include an entry point (the inference endpoints
    that serving.yml and monitoring.yml hand over)."""
    roles = root / "roles"
    for role in sorted(paths.ROLES.iterdir()):
        (roles / role.name / "tasks").mkdir(parents=True)
        for folder in ("defaults", "vars", "templates"):
            if (role / folder).is_dir():
                (roles / role.name / folder).symlink_to(role / folder)
        for tasks_file in sorted((role / "tasks").glob("*.yml")):
            if tasks_file.name != "main.yml":
                (roles / role.name / "tasks" / tasks_file.name).symlink_to(tasks_file)
        main = tasks.get(role.name)
        (roles / role.name / "tasks/main.yml").write_text(main.read_text() if main else "---\n[]\n")
    return roles


def ansible_playbook(playbook: Path, inventory: Path, roles: Path, extra: dict[str, str] | None = None) -> None:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(paths.ANSIBLE_CFG),
        "ANSIBLE_ROLES_PATH": str(roles),
        "ANSIBLE_LIBRARY": str(HERE / "nvidia/library"),  # golden_facts
        # Mitogen, as `provision up` runs: one Python per host instead of one per task, about twice as fast here.
        **runner.strategy_env("mitogen", lambda note: None),
        "ANSIBLE_CACHE_PLUGIN": "memory",
    }
    extra = {**(extra or {}), "ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), "-e", json.dumps(extra),
         str(playbook)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


# ---- render/<case>: provision render's cases -----------------------------------------------------------


@pytest.fixture(scope="module")
def module_rendered(
    tmp_path_factory: pytest.TempPathFactory, rendered_case: RenderedCase
) -> dict[str, dict[str, bytes]]:
    """case -> file -> what the template module wrote, all cases in one ansible-playbook run.

    For each case: a play on localhost points the inventory at the case's file and re-reads it (so each case
    sees only its own hosts, groups and group_vars), then the plays of serving.yml, monitoring.yml, tunnel.yml and
    egress.yml (the playbooks of render.RENDERABLE: hosts, roles, order; no become or facts), limited to the case's
    first host, run with stand-in roles, then the hosts' facts are cleared for the next case.
    """
    project = tmp_path_factory.mktemp("serving-project")
    (project / "playbooks").mkdir()
    (project / "templates").symlink_to(paths.TEMPLATES)  # the roles' playbook_dir/../templates
    roles = stand_in_roles(project / "playbooks", {role: STAND_INS / f"{role}.yml" for role in STAND_IN_ROLES})
    serving = [
        play
        for name in dict.fromkeys(item.playbook for item in render.RENDERABLE)
        for play in yaml.safe_load((paths.PLAYBOOKS / name).read_text(encoding="utf-8"))
    ]
    current, out = project / "inventory.yml", project / "out"
    plays: list[dict[str, Any]] = []
    refresh = {"name": "Read the inventory again", "ansible.builtin.meta": "refresh_inventory"}
    forget = {"name": "Forget the case", "hosts": "all", "gather_facts": False,
              "tasks": [{"name": "Clear the facts", "ansible.builtin.meta": "clear_facts"}]}  # fmt: skip
    for case in RENDER_CASES:
        (out / case.name).mkdir(parents=True)
        link = {"src": str(case / "inventory.yml"), "dest": str(current), "state": "link"}
        switch = {"name": "Point the inventory at the case", "ansible.builtin.file": link}
        plays.append({"name": f"Switch to {case.name}", "hosts": "localhost", "gather_facts": False,
                      "tasks": [switch, refresh]})  # fmt: skip
        first = rendered_case(case)[0].hosts[0]  # the host provision render renders
        for play in serving:
            case_vars = {**play.get("vars", {}), "golden_out": str(out / case.name)}
            hosts = f"{play['hosts']}:&{first}"
            plays.append({**play, "hosts": hosts, "become": False, "gather_facts": False, "vars": case_vars})
        plays.append(forget)
    (project / "playbooks/cases.yml").write_text(yaml.safe_dump(plays, sort_keys=False))
    current.symlink_to(RENDER_CASES[0] / "inventory.yml")
    ansible_playbook(project / "playbooks/cases.yml", current, roles)
    return {case.name: {p.name: p.read_bytes() for p in (out / case.name).iterdir()} for case in RENDER_CASES}


@pytest.mark.parametrize("case", RENDER_CASES, ids=[case.name for case in RENDER_CASES])
def test_render_matches_the_template_module(
    rendered_case: RenderedCase, module_rendered: dict[str, dict[str, bytes]], case: Path
) -> None:
    ours = {file.name: file.text.encode("utf-8") for file in rendered_case(case)[1]}
    theirs = module_rendered[case.name]
    assert sorted(ours) == sorted(theirs), "provision render and the roles write different files"
    for name, data in ours.items():
        assert data == theirs[name], f"{case.name}/{name}: provision render differs from the template module"
    expected = {path.name: path.read_bytes() for path in sorted((case / "expected").glob("*"))}
    assert theirs == expected, f"{case.name}: the template module's files differ from expected/"


# ---- templates/<case>: the roles' own templates --------------------------------------------------------


@pytest.fixture(scope="module")
def role_cases_rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("role-templates")
    hosts = {case.name: {**case_of(case)["vars"], "golden_case": case_of(case)} for case in ROLE_CASES}
    (work / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False))
    roles = stand_in_roles(work, {case_of(case)["role"]: STAND_INS / "role_template.yml" for case in ROLE_CASES})
    (work / "out").mkdir()
    ansible_playbook(STAND_INS / "role_templates.yml", work / "hosts.yml", roles, {"golden_out": str(work / "out")})
    return work / "out"


def provision_renders(case: Path) -> str:
    """The case through render.py, with Ansible's precedence: role defaults, inventory, facts, role vars, the OS
    family's vars (include_vars), set_facts."""
    data = case_of(case)
    role = paths.ROLES / data["role"]
    os_vars = role / f"vars/{data['facts']['os_family']}.yml"
    variables = {
        **argcheck.role_defaults(role),
        **data["vars"],
        "ansible_facts": data["facts"],
        **argcheck.role_vars(role),
        **(yaml.safe_load(os_vars.read_text(encoding="utf-8")) if os_vars.is_file() else {}),
        **data["set_facts"],
        "inventory_hostname": case.name,
    }
    return render.render_template(role / "templates" / variables[data["template"]], variables)


@pytest.mark.parametrize("case", ROLE_CASES, ids=[case.name for case in ROLE_CASES])
def test_role_template_matches_the_template_module_and_golden(role_cases_rendered: Path, case: Path) -> None:
    theirs = (role_cases_rendered / case.name).read_bytes()
    ours = provision_renders(case).encode("utf-8")
    assert ours == theirs, f"{case.name}: render.py differs from the template module"
    expected = case / "expected" / expected_name(case)
    if UPDATE:
        expected.parent.mkdir(exist_ok=True)
        expected.write_bytes(theirs)
    assert expected.is_file(), f"{expected} is missing (PROVISION_UPDATE_GOLDEN=1)"
    assert theirs == expected.read_bytes(), f"{case.name}/expected/{expected.name} differs (PROVISION_UPDATE_GOLDEN=1)"


# ---- the stand-ins stay the roles' tasks ---------------------------------------------------------------


def _tasks(node: Any) -> Iterator[dict[str, Any]]:
    for task in node or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _tasks(task.get(key))


@pytest.mark.parametrize("role", STAND_IN_ROLES)
def test_stand_in_template_task_is_the_roles(role: str) -> None:
    """The stand-in's template task has the real one's src, task vars and loop, so a change there fails here."""

    def shape(task: dict[str, Any]) -> tuple[Any, ...]:
        return (task["ansible.builtin.template"]["src"], task.get("vars"), task.get("loop"), task.get("loop_control"))

    stand_in = [shape(t) for t in _tasks(yaml.safe_load((STAND_INS / f"{role}.yml").read_text()))
                if "ansible.builtin.template" in t]  # fmt: skip
    tasks = [
        t
        for path in sorted((paths.ROLES / role / "tasks").glob("*.yml"))
        for t in _tasks(yaml.safe_load(path.read_text()))
    ]
    real = [shape(t) for t in tasks if "ansible.builtin.template" in t]
    # A file the role hands packaged_daemon, which templates each one as it is (no task vars, no loop of the role's).
    real += [(f["src"], None, None, None) for t in tasks for f in t.get("vars", {}).get("packaged_daemon_files", [])]
    assert len(stand_in) == sum(item.role == role for item in render.RENDERABLE)  # one per template render shows
    for task in stand_in:
        src, task_vars, loop, loop_control = task
        loop_var = (loop_control or {}).get("loop_var")
        mirrored = [r for r in real if r[:3] == (src, task_vars, loop) and (r[3] or {}).get("loop_var") == loop_var]
        assert mirrored, f"{role}: the stand-in's template task {task} is none of the role's: {real}"


# ---- every template has a case -------------------------------------------------------------------------


def test_every_template_has_a_golden_case(rendered_case: RenderedCase) -> None:
    """A template in templates/ or a role's templates/ that no case renders is one nobody compared."""
    templates = {*paths.TEMPLATES.rglob("*.j2"), *paths.ROLES.glob("*/templates/**/*.j2")}
    covered = {file.template for case in RENDER_CASES for file in rendered_case(case)[1]}
    for case in ROLE_CASES:
        data = case_of(case)
        role = paths.ROLES / data["role"]
        covered.add(role / "templates" / argcheck.role_defaults(role)[data["template"]])
    missing = sorted(str(p.relative_to(paths.ROOT)) for p in templates - {p.resolve() for p in covered})
    assert not missing, f"templates without a golden case (add one under tests/golden/render or templates): {missing}"
