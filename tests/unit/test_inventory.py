"""Preflight checks: a bad inventory or tag stops before anything connects, naming what to fix."""

from collections.abc import Callable
from pathlib import Path

import pytest

from provision import inventory
from provision.errors import UsageError

Write = Callable[[str, str], Path]


def test_missing_inventory_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as error:
        inventory.load_inventory(Path("does-not-exist.yml"))
    assert str(error.value) == "inventory does-not-exist.yml: no such file or directory"


def test_yaml_syntax_error_names_file_line_and_column(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write("inventories/x/hosts.yml", "all:\n  hosts:\n    lab1: {ansible_host: [1\n")
    with pytest.raises(UsageError) as error:
        inventory.load_inventory(Path("inventories/x/hosts.yml"))
    message = str(error.value)
    assert message.startswith("inventories/x/hosts.yml:4:1: "), message
    assert "\n" not in message


def test_yaml_error_in_group_vars_names_that_file(write: Write, tmp_path: Path) -> None:
    write("inv/hosts.yml", "all:\n  hosts:\n    lab1:\n")
    write("inv/group_vars/all.yml", "a: 1\nb: : 2\n")
    with pytest.raises(UsageError, match=r"group_vars/all\.yml:2:4: mapping values are not allowed here$"):
        inventory.load_inventory(tmp_path / "inv")


def test_json_syntax_error_names_file_line_and_column(write: Write) -> None:
    path = write("inv.json", '{"all": {"hosts": {"lab1": {}},}}\n')
    with pytest.raises(UsageError, match=r"inv\.json:1:\d+: "):
        inventory.load_inventory(path)


def test_structural_error_reports_ansibles_reason(write: Write) -> None:
    path = write("hosts.yml", "all:\n  hosts:\n    - lab1\n")
    with pytest.raises(UsageError) as error:
        inventory.load_inventory(path)
    message = str(error.value)
    assert "hosts.yml" in message
    assert 'Invalid "hosts" entry for "all" group' in message
    assert "\n" not in message


def test_ini_error_reports_ansibles_reason(write: Write) -> None:
    path = write("hosts.ini", "[web\nlab1\n")
    with pytest.raises(UsageError, match=r"hosts\.ini: "):
        inventory.load_inventory(path)


def test_inventory_without_hosts_is_a_usage_error(write: Write) -> None:
    path = write("hosts.yml", "all:\n  hostz:\n    lab1:\n")
    with pytest.raises(UsageError, match="defines no hosts"):
        inventory.load_inventory(path)


def test_hosts_and_merged_hostvars(write: Write, tmp_path: Path) -> None:
    write(
        "inv/hosts.yml",
        "all:\n  hosts:\n    lab1:\n      ansible_port: 2201\n    bare:\n"
        "  children:\n    gpu:\n      hosts:\n        gpu1:\n",
    )
    write("inv/group_vars/all.yml", "base_apt_mirror: http://mirror.example/debian\n")
    write("inv/group_vars/gpu.yml", "inference_gpus: true\n")
    write("inv/host_vars/gpu1.yml", "inference_port: 9000\n")
    loaded = inventory.load_inventory(tmp_path / "inv")
    assert set(loaded.hosts) == {"lab1", "bare", "gpu1"}
    assert loaded.hostvars["lab1"]["ansible_port"] == 2201
    assert loaded.hostvars["bare"]["base_apt_mirror"] == "http://mirror.example/debian"
    assert loaded.hostvars["gpu1"]["inference_gpus"] is True
    assert loaded.hostvars["gpu1"]["inference_port"] == 9000
    assert loaded.groups["gpu"] == ("gpu1",)
    assert set(loaded.groups["all"]) == {"lab1", "bare", "gpu1"}
    assert loaded.match("gpu") == ("gpu1",)
    assert loaded.match("lab*") == ("lab1",)
    assert loaded.match("nothing") == ()


PATTERNS = [
    "all",
    "*",
    "lab",
    "lab1",
    "lab*",
    "*1",
    "la?1",
    "~gpu[12]",
    "~web|lab2",
    "lab:gpu",
    "lab, gpu",
    "all:!lab",
    "!lab",
    "all:&gpu",
    "serving:&gpu:!gpu2",
    "lab*:!lab2",
    "lab[0]",
    "gpu[1]",
    "gpu[-1]",
    "lab[0:1]",
    "serving[1:]",
    "nothing",
    "nothing:lab1",
]


def test_select_matches_ansibles_own_host_patterns(write: Write) -> None:
    """A play's hosts: and --limit select the hosts ansible-playbook would (its InventoryManager as reference)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    path = write(
        "hosts.yml",
        "all:\n  hosts:\n    web:\n  children:\n    lab:\n      hosts: {lab1: , lab2: }\n"
        "    serving:\n      hosts: {web: }\n      children:\n        gpu:\n          hosts: {gpu1: , gpu2: }\n",
    )
    ours = inventory.load_inventory(path)
    reference = InventoryManager(loader=DataLoader(), sources=[str(path)])
    for pattern in PATTERNS:
        expected = sorted(host.name for host in reference.get_hosts(pattern))
        assert sorted(ours.select(pattern)) == expected, pattern
    limit_file = write("limit.txt", "lab1\ngpu2\n")
    assert sorted(ours.select(f"@{limit_file}")) == ["gpu2", "lab1"]
    with pytest.raises(UsageError, match=r"host pattern '~lab\(': not a valid regular expression"):
        ours.select("~lab(")
    with pytest.raises(UsageError, match=r"host pattern @nofile: cannot read nofile"):
        ours.select("@nofile")


def test_vault_tags_do_not_trip_the_syntax_check(write: Write) -> None:
    path = write("v.yml", "secret: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n")
    inventory._check_syntax(path)


# ---- tags -------------------------------------------------------------------------------------------


@pytest.fixture
def project(write: Write) -> Path:
    write(
        "playbooks/base.yml",
        "- hosts: all\n  tags: [base]\n  roles:\n    - role: base\n      tags: role-tag\n"
        "  tasks:\n    - ansible.builtin.include_role:\n        name: base\n        apply:\n"
        "          tags: [applied]\n",
    )
    write(
        "playbooks/roles/base/tasks/main.yml",
        "- name: Do it\n  ansible.builtin.debug: {}\n  tags: 'mirror, apt'\n"
        "- block:\n    - name: Inner\n      ansible.builtin.debug: {}\n      tags: [inner, 7]\n",
    )
    write("playbooks/roles/base/tasks/broken.yml", "- name: [unclosed\n")
    return write("playbooks/site.yml", "- ansible.builtin.import_playbook: base.yml\n")


def test_known_tags_finds_every_form(project: Path) -> None:
    tags = inventory.known_tags(project)
    expected = {"base", "role-tag", "applied", "mirror", "apt", "inner", "7"}
    assert tags == expected | inventory.SPECIAL_TAGS


def test_check_tags_names_the_unknown_tag(project: Path) -> None:
    known = inventory.known_tags(project)
    inventory.check_tags(("mirror", "always"), ("apt",), known)
    with pytest.raises(UsageError) as error:
        inventory.check_tags(("mirror",), ("foo",), known)
    assert str(error.value) == "unknown tag 'foo' (known: 7, applied, apt, base, inner, mirror, role-tag)"


def test_split_tags_accepts_repeats_and_commas() -> None:
    assert inventory.split_tags(["a,b", " c ", ",", "d"]) == ("a", "b", "c", "d")
