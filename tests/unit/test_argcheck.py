"""The controller-side check of role variables (provision/argcheck.py): a bad value stops the run before any
connection, one line per problem naming host, variable, the value and what is allowed; valid inventories pass.

Small playbook projects of our own pin the rules; the real roles' specs, playbooks and example inventories
show that the check covers every role and raises no false alarm.
"""

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision import argcheck, paths
from provision.errors import UsageError
from provision.inventory import Inventory, load_inventory

Write = Callable[[str, str], Path]

SPEC = {
    "argument_specs": {
        "main": {
            "options": {
                "r_count": {"type": "int", "description": "."},
                "r_method": {"type": "str", "choices": ["least_conn", "random"], "description": "."},
                "r_flag": {"type": "bool", "description": "."},
                "r_env": {"type": "dict", "description": "."},
                "r_ports": {"type": "list", "elements": "int", "description": "."},
                "r_when": {"type": "list", "elements": "str", "choices": ["error", "timeout"], "description": "."},
                "r_items": {
                    "type": "list",
                    "elements": "dict",
                    "description": ".",
                    "options": {"name": {"type": "str", "required": True, "description": "."}},
                },
            }
        },
        "extra": {"options": {"r_other": {"type": "int", "description": "."}}},
    }
}
DEFAULTS = {
    "r_count": 1,
    "r_method": "least_conn",
    "r_flag": True,
    "r_env": {},
    "r_ports": [8000],
    "r_when": ["error"],
    "r_items": [],
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """site.yml imports two playbooks: role `every` on all hosts, role `serve` on the `serving` group."""

    def role(name: str, prefix: str) -> None:
        spec = yaml.safe_dump(SPEC).replace("r_", f"{prefix}_")
        defaults = yaml.safe_dump(DEFAULTS).replace("r_", f"{prefix}_")
        (tmp_path / f"roles/{name}/meta").mkdir(parents=True)
        (tmp_path / f"roles/{name}/defaults").mkdir()
        (tmp_path / f"roles/{name}/meta/argument_specs.yml").write_text(spec)
        (tmp_path / f"roles/{name}/defaults/main.yml").write_text(defaults)

    role("every", "e")
    role("serve", "s")
    (tmp_path / "site.yml").write_text(
        "- import_playbook: base.yml\n- ansible.builtin.import_playbook: serving.yml\n  tags: [serving]\n"
    )
    (tmp_path / "base.yml").write_text("- hosts: all\n  roles:\n    - role: every\n      tags: [every]\n")
    (tmp_path / "serving.yml").write_text("- hosts: serving\n  roles: [serve]\n")
    return tmp_path / "site.yml"


def inventory(hostvars: dict[str, dict[str, Any]], serving: tuple[str, ...] = ("h1",)) -> Inventory:
    hosts = tuple(hostvars)
    return Inventory(Path("hosts.yml"), hosts, hostvars, {"all": hosts, "serving": serving})


def lines(problems: list[argcheck.Problem]) -> list[str]:
    return [str(problem) for problem in problems]


def test_a_valid_inventory_passes(project: Path) -> None:
    inv = inventory({"h1": {"s_count": 3, "s_method": "random"}, "h2": {}})
    assert argcheck.check(inv, project, extravars={"e_count": "2", "s_flag": "yes", "s_ports": "8000,8001"}) == []


CASES = [
    pytest.param({}, {"s_count": "two"}, "h1: s_count: 'two' is not an int (set by -e)", id="extra-var-not-int"),
    pytest.param({"s_count": 2.5}, {}, "h1: s_count: 2.5 is not an int (set in the inventory)", id="float-not-int"),
    pytest.param(
        {"s_method": "fastest"},
        {},
        "h1: s_method: 'fastest' is not one of 'least_conn', 'random' (set in the inventory)",
        id="bad-choice",
    ),
    pytest.param(
        {}, {"s_flag": "maybe"}, "h1: s_flag: 'maybe' is not a bool (true or false) (set by -e)", id="not-bool"
    ),
    pytest.param(
        {"s_ports": [8000, "x"]},
        {},
        "h1: s_ports: a list of 2 items has an item that is not an int (set in the inventory)",
        id="bad-element",
    ),
    pytest.param(
        {"s_when": ["error", "never"]},
        {},
        "h1: s_when: 'never' not allowed; each item must be one of 'error', 'timeout' (set in the inventory)",
        id="bad-list-choice",
    ),
    pytest.param(
        {"s_items": [{"nam": "x"}]},
        {},
        "h1: s_items: missing required arguments: name found in s_items; s_items.nam. Supported parameters "
        "include: name. (set in the inventory)",
        id="nested",
    ),
    # The value of a variable meant to hold a mapping (a secret's environment) is never echoed.
    pytest.param({"s_env": "TOKEN: hf_secret"}, {}, "h1: s_env: a string is not a mapping (set in the inventory)"),
]


@pytest.mark.parametrize(("hostvars", "extravars", "expected"), CASES)
def test_a_bad_value_is_one_line_naming_host_variable_value_and_what_is_allowed(
    project: Path, hostvars: dict[str, Any], extravars: dict[str, Any], expected: str
) -> None:
    inv = inventory({"h1": hostvars, "h2": {}})
    assert lines(argcheck.check(inv, project, extravars=extravars)) == [expected]


def test_extra_vars_win_over_the_inventory_and_the_inventory_over_defaults(project: Path) -> None:
    inv = inventory({"h1": {"s_count": "two"}})
    assert argcheck.check(inv, project, extravars={"s_count": "2"}) == []
    assert lines(argcheck.check(inv, project)) == ["h1: s_count: 'two' is not an int (set in the inventory)"]


def test_templates_and_vault_values_are_left_to_the_run(project: Path) -> None:
    vault = {"__ansible_vault": "$ANSIBLE_VAULT;1.1;AES256\n6162\n"}
    hostvars = {
        "s_count": "{{ replicas }}",
        "s_env": {"TOKEN": vault},
        "s_ports": ["{% x %}", 8001],
        "s_when": ["{{ a }}", "timeout"],
        "s_items": [{"name": "{{ inventory_hostname }}"}],
        "s_flag": vault,
    }
    assert argcheck.check(inventory({"h1": hostvars}), project, extravars={"s_method": "{{ 'random' }}"}) == []


def test_only_the_templated_value_is_skipped_not_the_rest(project: Path) -> None:
    """Other variables of the role, and the other items of a list or mapping holding a template, are checked."""
    hostvars = {
        "s_count": "{{ replicas }}",
        "s_ports": ["{{ port }}", "x"],
        "s_when": ["{{ a }}", "never"],
        "s_items": [{"name": "{{ inventory_hostname }}", "bogus": 1}],
    }
    assert lines(argcheck.check(inventory({"h1": hostvars}), project, extravars={"s_flag": "maybe"})) == [
        "h1: s_flag: 'maybe' is not a bool (true or false) (set by -e)",
        "h1: s_items: s_items.bogus. Supported parameters include: name. (set in the inventory)",
        "h1: s_ports: a list of 2 items has an item that is not an int (set in the inventory)",
        "h1: s_when: 'never' not allowed; each item must be one of 'error', 'timeout' (set in the inventory)",
    ]


def test_an_unsafe_value_is_checked_as_the_text_it_is(project: Path) -> None:
    inv = inventory({"h1": {"s_method": {"__ansible_unsafe": "{{ fastest }}"}}})
    assert lines(argcheck.check(inv, project)) == [
        "h1: s_method: '{{ fastest }}' is not one of 'least_conn', 'random' (set in the inventory)"
    ]


def test_a_role_is_checked_only_on_the_hosts_its_play_targets(project: Path) -> None:
    inv = inventory({"h1": {}, "h2": {"s_count": "two", "e_count": "x"}})
    assert lines(argcheck.check(inv, project)) == ["h2: e_count: 'x' is not an int (set in the inventory)"]


def test_hosts_with_the_same_problem_share_a_line(project: Path) -> None:
    hosts = [f"h{n}" for n in range(1, 9)]
    inv = inventory({host: {} for host in hosts}, serving=tuple(hosts))
    assert lines(argcheck.check(inv, project, extravars={"e_count": "x"})) == [
        "h1, h2, h3, h4, h5 and 3 more: e_count: 'x' is not an int (set by -e)"
    ]


def test_limit_leaves_other_hosts_unchecked(project: Path) -> None:
    inv = inventory({"h1": {"s_count": "two"}, "h2": {"e_count": "x"}})
    assert lines(argcheck.check(inv, project, limit="h2")) == ["h2: e_count: 'x' is not an int (set in the inventory)"]
    assert lines(argcheck.check(inv, project, limit="all:!h2")) == [
        "h1: s_count: 'two' is not an int (set in the inventory)"
    ]


def test_skip_tags_leave_a_role_unchecked_and_tags_do_not(project: Path) -> None:
    """Ansible tags a role's validation `always` (plus the role's tags): --tags still runs it, --skip-tags not."""
    inv = inventory({"h1": {"s_count": "two", "e_count": "x"}})
    assert len(argcheck.check(inv, project)) == 2
    assert lines(argcheck.check(inv, project, skip_tags=["serving"])) == [
        "h1: e_count: 'x' is not an int (set in the inventory)"
    ]
    assert lines(argcheck.check(inv, project, skip_tags=["every"])) == [
        "h1: s_count: 'two' is not an int (set in the inventory)"
    ]
    assert argcheck.check(inv, project, skip_tags=["always"]) == []
    assert argcheck.check(inv, project, skip_tags=["tagged"]) == []
    assert len(argcheck.check(inv, project, skip_tags=["all"])) == 2  # `always` still runs
    assert argcheck.check(inv, project, skip_tags=["all", "always"]) == []


def test_a_role_without_argument_specs_is_not_checked(project: Path) -> None:
    (project.parent / "roles/every/meta/argument_specs.yml").unlink()
    inv = inventory({"h1": {"e_count": "x"}})
    assert argcheck.check(inv, project) == []


def test_role_parameters_and_play_vars_count_and_entry_points_follow_tasks_from(project: Path) -> None:
    (project.parent / "other.yml").write_text(
        "- hosts: all\n  vars: {e_count: '{{ n }}'}\n  roles:\n    - role: every\n      e_method: fastest\n"
        "  tasks:\n    - block:\n        - ansible.builtin.include_role: {name: serve, tasks_from: extra}\n"
    )
    inv = inventory({"h1": {"e_method": "random", "e_count": "x", "s_other": "y"}})
    assert lines(argcheck.check(inv, project.parent / "other.yml")) == [
        "h1: e_method: 'fastest' is not one of 'least_conn', 'random' (a role parameter)",
        "h1: s_other: 'y' is not an int (set in the inventory)",
    ]


def test_preflight_raises_one_line_per_problem_and_says_nothing_was_contacted(project: Path) -> None:
    inv = inventory({"h1": {"s_count": "two", "e_count": "x"}})
    with pytest.raises(UsageError) as error:
        argcheck.preflight(inv, project)
    assert str(error.value).splitlines() == [
        "h1: e_count: 'x' is not an int (set in the inventory)",
        "h1: s_count: 'two' is not an int (set in the inventory)",
        "2 invalid role variables; nothing was contacted",
    ]


def test_a_template_left_to_the_run_is_named_when_the_role_checks_it(project: Path, local_inventory: Path) -> None:
    """The other half of the story: on the host, Ansible's own check fails, and its line names the variable."""
    from provision import events, runner

    (local_inventory.parent / "group_vars").mkdir()
    (local_inventory.parent / "group_vars/all.yml").write_text("e_count: \"{{ 'two' }}\"\n")
    assert argcheck.check(load_inventory(local_inventory), project) == []
    failures: list[str] = []

    def collect(event: runner.TaskEvent) -> None:
        line = events.event_line(event)
        if line is not None and line.status == "failed":
            failures.append(line.text)

    request = runner.RunRequest(inventory=local_inventory, project_dir=project.parent)
    assert runner.run(request, collect).stats["local1"].failed == 1
    (failure,) = failures
    assert failure.startswith("  failed       local1  every : Validating arguments against arg spec 'main': ")
    assert "argument 'e_count' is of type str and we were unable to convert to int" in failure


# ---- the real roles and playbooks --------------------------------------------------------------------------


def test_every_role_with_argument_specs_is_checked_where_site_yml_runs_it() -> None:
    with_specs = {path.parent.parent.name for path in paths.ROLES.glob("*/meta/argument_specs.yml")}
    uses = argcheck.role_uses(paths.SITE_PLAYBOOK)
    assert {use.role.name for use in uses if argcheck.argument_spec(use.role)} == with_specs
    # Main entry points: other plays include entry points of nginx and inference on other hosts.
    hosts = {use.role.name: use.hosts for use in uses if use.entry_point == "main"}
    assert hosts["base"] == "all"
    assert (hosts["inference"], hosts["nginx"]) == ("inference", "gateway")  # from serving.yml, not a table


def test_the_playbooks_set_variables_only_where_the_check_reads_them() -> None:
    """argcheck reads defaults, role vars, the inventory, play vars, -e and role parameters; a vars_files or
    a group_vars directory beside the playbooks would change values behind its back."""
    assert not list(paths.PLAYBOOKS.glob("group_vars")) and not list(paths.PLAYBOOKS.glob("host_vars"))
    for playbook in paths.PLAYBOOKS.glob("*.yml"):
        for play in yaml.safe_load(playbook.read_text()) or []:
            assert "vars_files" not in play and "vars_prompt" not in play, playbook.name


def test_weights_verify_runs_an_entry_point_without_a_spec() -> None:
    """As at run time: include_role's tasks_from names the entry point, and weights has none for verify.yml."""
    (use,) = argcheck.role_uses(paths.PLAYBOOKS / "weights_verify.yml")
    assert (use.role.name, use.entry_point) == ("weights", "verify.yml")
    assert argcheck.argument_spec(use.role, use.entry_point) == {}


def _bad_value(spec: dict[str, Any]) -> object | None:
    if "choices" in spec and spec.get("type", "str") == "str":
        return "no-such-choice"
    return {"int": "many", "bool": "perhaps", "dict": "not-a-mapping", "list": {"a": 1}}.get(spec.get("type", "str"))


def test_every_typed_variable_of_every_real_role_is_checked() -> None:
    """Each int, bool, dict, list or choice variable of every role gets a wrong value: each is named."""
    expected, extravars = set(), {}
    for use in argcheck.role_uses(paths.SITE_PLAYBOOK):
        for name, spec in argcheck.argument_spec(use.role).items():
            if (bad := _bad_value(spec)) is not None:
                extravars[name] = bad
                expected.add(name)
    groups = {"all": ("h1",), "inference": ("h1",), "gateway": ("h1",), "monitoring": ("h1",)}
    inv = Inventory(Path("hosts.yml"), ("h1",), {"h1": {}}, groups)
    problems = argcheck.check(inv, paths.SITE_PLAYBOOK, extravars=extravars)
    assert {problem.variable for problem in problems} == expected
    assert len(expected) > 40


def _lab_inventory(tmp_path: Path) -> Path:
    """inventories/lab as `provision lab up` and `provision lab demo-image --vars-out` leave it."""
    import shutil

    from provision import lab
    from provision.lab.demo_image import DemoImage
    from provision.lab.inventory import _write_inventory

    inv = tmp_path / "lab"
    shutil.copytree(paths.INVENTORIES / "lab", inv, ignore=shutil.ignore_patterns("hosts.yml", "inference.yml"))
    state = tmp_path / "state"
    state.mkdir()
    hosts = [lab.LabHostStatus(f"lab{n}", 2200 + n, None, True) for n in (1, 2)]
    _write_inventory(lab.LabDirs(state, tmp_path / "cache"), inv / "hosts.yml", hosts, mirror=True)
    image = DemoImage(tmp_path / "demo.tar", "provision-demo:0123456789ab")
    (inv / "group_vars/inference.yml").write_text(yaml.safe_dump(image.inventory_vars()))
    return inv


EXAMPLES = [
    *(paths.INVENTORIES / cloud for cloud in ("gcp", "oci", "aliyun")),
    *sorted((paths.ROOT / "tests/golden/render").glob("*/inventory.yml")),
]


@pytest.mark.parametrize("path", [*EXAMPLES, "lab"], ids=lambda p: str(p).removeprefix(f"{paths.ROOT}/"))
def test_the_example_inventories_pass(path: Path | str, tmp_path: Path) -> None:
    inv = load_inventory(_lab_inventory(tmp_path) if path == "lab" else path)
    assert lines(argcheck.check(inv, paths.SITE_PLAYBOOK)) == []


# ---- the CLI: nothing is contacted ------------------------------------------------------------------------


@contextlib.contextmanager
def recording_listener() -> Iterator[tuple[int, list[tuple[str, int]]]]:
    """A TCP listener on 127.0.0.1 (a free port) that records every connection made to it."""
    connections: list[tuple[str, int]] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.1)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    client, address = server.accept()
                    connections.append(address)
                    client.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1], connections
        finally:
            stop.set()
            thread.join()


def test_up_with_bad_variables_exits_2_naming_them_and_contacts_nothing(write: Write, tmp_path: Path) -> None:
    with recording_listener() as (port, connections):
        write(
            "inv/hosts.yml",
            f"all:\n  hosts:\n    lab1:\n      ansible_host: 127.0.0.1\n      ansible_port: {port}\n"
            "  children:\n    inference:\n      hosts:\n        lab1:\n    gateway:\n      hosts:\n        lab1:\n",
        )
        write("inv/group_vars/gateway.yml", "nginx_upstream_method: fastest\n")
        proc = subprocess.run(
            [sys.executable, "-m", "provision", "up", "-i", str(tmp_path / "inv"), "-e", "inference_replicas=two"],
            capture_output=True,
            text=True,
            # Should the check let the run through, it fails fast and leaves the user's fact cache alone.
            env={**os.environ, "ANSIBLE_TIMEOUT": "5", "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts")},
            check=False,
            timeout=300,
        )
    assert connections == [], f"{len(connections)} connections to the host: {proc.stdout}{proc.stderr}"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "provision: error: lab1: inference_replicas: 'two' is not an int (set by -e)",
        "provision: error: lab1: nginx_upstream_method: 'fastest' is not one of 'least_conn', 'round_robin', "
        "'ip_hash', 'random', 'random two least_conn' (set in the inventory)",
        "provision: error: 2 invalid role variables; nothing was contacted",
    ]


def test_a_role_that_roles_include_is_checked_on_their_hosts() -> None:
    """live_config runs inside container_runtime (inference hosts), nginx (gateway hosts), openvpn_client (all
    hosts; it skips itself on those without a VPN server) and, through packaged_daemon, monitoring_agent (all
    hosts) and monitoring_server (monitoring hosts)."""
    uses = argcheck.role_uses(paths.SITE_PLAYBOOK)
    live_config_hosts = {use.hosts for use in uses if use.role.name == "live_config"}
    assert live_config_hosts == {"inference", "gateway", "all", "monitoring"}
    inv = Inventory(Path("hosts.yml"), ("h1",), {"h1": {}}, {"all": ("h1",), "inference": ("h1",), "gateway": ("h1",)})
    (problem,) = argcheck.check(inv, paths.SITE_PLAYBOOK, extravars={"live_config_apply": "kill"})
    assert problem.variable == "live_config_apply" and problem.hosts == ("h1",)
