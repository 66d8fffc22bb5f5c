"""Rendering: variables resolve as in Ansible, each docker argument stays whole, errors name the culprit."""

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision import batches, paths, render
from provision.errors import UsageError
from provision.inventory import Inventory


def inventory(**hostvars: Any) -> Inventory:
    """h1 in both serving groups, so it gets the inference unit and nginx.conf."""
    groups = {"inference": ("h1",), "gateway": ("h1",)}
    return Inventory(path=Path("inventories/test/hosts.yml"), hosts=("h1",), hostvars={"h1": hostvars}, groups=groups)


def unit(**hostvars: Any) -> str:
    (file,) = [f for f in render.render_host(inventory(**hostvars), "h1") if f.name.endswith(".service")]
    return file.text


def exec_start_argv(text: str) -> list[str]:
    """ExecStart= split into words the way systemd does for what the template emits (no backslashes)."""
    logical = text.replace("\\\n", " ")
    (line,) = [line for line in logical.splitlines() if line.startswith("ExecStart=")]
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(line.removeprefix("ExecStart="))]


def test_every_argument_stays_whole() -> None:
    args = ["--served-model-name", "my model", "it's", "100%", "$HOME", "${HOME}", "a  b", ""]
    extra = ["--label", "owner=ml team"]
    argv = exec_start_argv(unit(inference_args=args, inference_extra_docker_args=extra, inference_image="img:1"))
    assert argv[argv.index("img:1") + 1 :] == args
    assert argv[argv.index("img:1") - 2 : argv.index("img:1")] == extra
    assert argv[:4] == ["/usr/bin/docker", "run", "--rm", "--name"]


def test_backslashes_are_escaped_for_systemd() -> None:
    assert "'back\\\\slash'" in unit(inference_args=["back\\slash"])


def test_gpus_and_limits_are_optional() -> None:
    plain = exec_start_argv(unit())
    assert "--gpus" not in plain and "--memory" not in plain and "--cpus" not in plain
    full = exec_start_argv(unit(inference_gpus="yes", inference_memory_max="8g", inference_cpu_quota=2))
    assert full[full.index("--gpus") : full.index("--gpus") + 2] == ["--gpus", "all"]
    assert "8g" in full and "2" in full


@pytest.mark.parametrize(("setting", "passed"), [("auto", False), (False, False), ("false", False), (True, True)])
def test_gpus_auto_renders_as_a_host_without_them(setting: object, passed: bool) -> None:
    """render cannot look at the host: auto renders as the role renders it on a host without GPUs."""
    assert ("--gpus" in exec_start_argv(unit(inference_gpus=setting))) is passed


def test_output_file_is_named_after_the_unit() -> None:
    files = render.render_host(inventory(inference_name="qwen"), "h1")
    assert [f.name for f in files] == ["qwen.service", "nginx.conf"]
    file = files[0]
    assert "ExecStop=/usr/bin/docker stop -t 30 qwen\n" in file.text


def test_variables_refer_to_other_variables_lazily() -> None:
    text = unit(
        inference_name="qwen",
        inference_env_file="/etc/{{ inference_name }}/env",
        unrelated="{{ ansible_facts.only_a_live_run_has_this }}",
    )
    assert "--env-file /etc/qwen/env" in text


def test_unknown_host_names_host_and_inventory() -> None:
    with pytest.raises(UsageError, match=r"host 'ghost' is not in inventory inventories/test/hosts.yml \(hosts: h1\)"):
        render.render_host(inventory(), "ghost")


def test_undefined_variable_in_a_variable_names_both() -> None:
    with pytest.raises(UsageError, match=r"variable inference_env_file: 'nope' is undefined"):
        unit(inference_env_file="/etc/{{ nope }}")


def test_a_variable_that_is_only_an_undefined_name_names_both() -> None:
    with pytest.raises(UsageError, match=r"variable inference_image: 'nope' is undefined"):
        render.HostVars(inventory(inference_image="{{ nope }}"), "h1")["inference_image"]


def test_self_reference_is_reported() -> None:
    with pytest.raises(UsageError, match="inference_name refers to itself"):
        unit(inference_name="{{ inference_name }}-x")


def test_undefined_variable_in_a_template_names_template_and_variable(tmp_path: Path) -> None:
    template = tmp_path / "mine.service.j2"
    template.write_text("# Managed by provision\nX={{ inference_name }} {{ not_defined_anywhere }}\n")
    with pytest.raises(UsageError) as error:
        unit(inference_unit_template=str(template))
    assert str(error.value) == f"template {template}: 'not_defined_anywhere' is undefined; define it in the inventory"


def test_user_template_override_by_absolute_path(tmp_path: Path) -> None:
    template = tmp_path / "mine.service.j2"
    template.write_text("# Managed by provision\n{% if true %}\nName={{ inference_name | upper }}\n{% endif %}\n")
    assert unit(inference_unit_template=str(template)) == "# Managed by provision\nName=INFERENCE\n"


def test_missing_template_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"template systemd/nope\.j2 not found"):
        unit(inference_unit_template="systemd/nope.j2")


def template_file(tmp_path: Path, source: str, **variables: Any) -> str:
    """What the template module writes for a template file with this text."""
    path = tmp_path / "t.j2"
    path.write_text(source, encoding="utf-8")
    return render.render_template(path, variables)


def test_ansible_compatible_filters(tmp_path: Path) -> None:
    def r(source: str, **variables: Any) -> str:
        return template_file(tmp_path, source, **variables)

    assert r("{{ 'yes' | bool }} {{ 'off' | bool }} {{ 1 | bool }}") == "True False True"
    assert r("{{ 'a b' | quote }}") == "'a b'"
    assert r("{{ {'b': 1, 'a': [1]} | to_json }}") == '{"b": 1, "a": [1]}'
    assert r("{{ {'b': 1, 'a': 2} | to_nice_json }}") == '{\n    "a": 2,\n    "b": 1\n}'
    assert r("{{ 'v1.2.3' | regex_replace('^v', '') }}") == "1.2.3"
    assert r("{{ x | mandatory }}", x=3) == "3"
    assert r("{{ x | default('d') }}") == "d"
    with pytest.raises(Exception, match="must be set"):
        r("{{ missing | mandatory('must be set') }}")


def test_ansible_whitespace_rules(tmp_path: Path) -> None:
    assert template_file(tmp_path, "{% if true %}\n  x\n{% endif %}\n") == "  x\n"  # trim_blocks
    assert template_file(tmp_path, "  {% if true %}y{% endif %}") == "  y"  # no lstrip_blocks
    assert template_file(tmp_path, "z\n") == "z\n"  # keep_trailing_newline


def test_upstream_group_hosts_come_from_their_own_variables() -> None:
    """groups and hostvars are Ansible's: another host's variables are templated in that host's context."""
    hostvars = {
        "h1": {"nginx_upstream_group": "inference", "base_port": 1},
        "h2": {
            "ansible_host": "10.0.0.9",
            "inference_replicas": 2,
            "inference_port": "{{ base_port }}",
            "base_port": 7000,
        },
    }
    groups = {"all": ("h1", "h2"), "inference": ("h1", "h2"), "gateway": ("h1",)}
    inv = Inventory(path=Path("inventories/test/hosts.yml"), hosts=("h1", "h2"), hostvars=hostvars, groups=groups)
    (conf,) = [f.text for f in render.render_host(inv, "h1") if f.name == "nginx.conf"]
    servers = [line.split()[1] for line in conf.splitlines() if line.strip().startswith("server 1")]
    assert servers == ["127.0.0.1:8000", "10.0.0.9:7000", "10.0.0.9:7001"]


@pytest.mark.parametrize("replicas", [1, 3])
def test_the_published_endpoints_are_the_units_the_role_deploys(replicas: int) -> None:
    """inference's tasks/endpoints.yml names and numbers replicas by the rule its main entry point deploys by."""
    settings = {"inference_name": "qwen", "inference_replicas": replicas, "inference_port": 9000}
    variables = render.HostVars(inventory(**settings), "h1")
    endpoints = variables["__inference_endpoints"]
    assert [[e["name"], e["port"]] for e in endpoints] == [list(unit) for unit in variables["__inference_units_wanted"]]
    assert {e["host"] for e in endpoints} == {"h1"} and {e["bind_address"] for e in endpoints} == {"127.0.0.1"}


@pytest.mark.parametrize(("playbook", "role", "handed"), [
    ("serving.yml", "nginx", "nginx_upstream_endpoints"),
    ("monitoring.yml", "monitoring_server", "monitoring_server_inference_endpoints"),
])  # fmt: skip
def test_the_plays_hand_the_inference_endpoints_over_with_the_roles_tags(playbook: str, role: str, handed: str) -> None:
    """The pre_task that asks the inference role runs whenever the role does: with its tags (nginx's is
    batches.DRAIN_TAG, what a rolling run drains and rejoins with), and render hands over what it publishes."""
    play = next(p for p in yaml.safe_load((paths.PLAYBOOKS / playbook).read_text()) if "pre_tasks" in p)
    (entry,) = [r for r in play["roles"] if r["role"] == role]
    (ask,) = play["pre_tasks"]
    assert set(ask["tags"]) == set(ask["ansible.builtin.include_role"]["apply"]["tags"]) == set(entry["tags"])
    if role == "nginx":
        assert batches.DRAIN_TAG in ask["tags"]
    hostvars = {"h1": {"inference_replicas": 2}, "h2": {"inference_replicas": 2, "inference_port": 9000}}
    groups = {"all": ("h1", "h2"), "inference": ("h1", "h2"), "gateway": ("h1",), "monitoring": ("h1",)}
    inv = Inventory(path=Path("inventories/test/hosts.yml"), hosts=("h1", "h2"), hostvars=hostvars, groups=groups)
    endpoints = render.HostVars(inv, "h1", render.handed_over(inv, "h1", paths.PLAYBOOKS / playbook, role))[handed]
    assert [(e["host"], e["name"], e["port"]) for e in endpoints] == [
        ("h1", "inference-1", 8000), ("h1", "inference-2", 8001),
        ("h2", "inference-1", 9000), ("h2", "inference-2", 9001),
    ]  # fmt: skip


def test_lookups_work_as_in_a_play(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISION_TEST_IMAGE", "registry.test/vllm:1")
    assert "registry.test/vllm:1" in unit(inference_image="{{ lookup('ansible.builtin.env', 'PROVISION_TEST_IMAGE') }}")
