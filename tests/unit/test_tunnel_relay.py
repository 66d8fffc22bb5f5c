"""The tunnel role and the nginx relay preset without a host: what they render, the settings they refuse (their
validate.yml expressions, templated as Ansible would), and how `provision test` reads a tunnel unit's state."""

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision import paths, render
from provision.inventory import Inventory
from provision.smoke import serving_checks, tunnel_checks

FAR = {"ansible_host": "127.0.0.1", "ansible_port": 2312, "tunnel_ssh_address": "10.0.2.2",
       "tunnel_ssh_port": "{{ ansible_port }}"}  # fmt: skip
FORWARD = {"name": "web", "host": "far", "local": [{"listen": "18000", "to": "127.0.0.1:8080"}]}


def lab(near: dict[str, Any], far: dict[str, Any] | None = None) -> Inventory:
    hostvars = {"near": near, "far": FAR if far is None else far}
    groups = {"all": ("near", "far"), "gateway": ("near",)}
    return Inventory(path=Path("inventories/test/hosts.yml"), hosts=("near", "far"), hostvars=hostvars, groups=groups)


def exec_start_argv(text: str) -> list[str]:
    logical = text.replace("\\\n", " ")
    (line,) = [line for line in logical.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def problems(role: str, inventory: Inventory, host: str = "near") -> list[str]:
    """The role's validate.yml problem list for the host, templated with the role's own expressions."""
    (task,) = yaml.safe_load((paths.ROLES / role / "tasks/validate.yml").read_text())
    variables = render.HostVars(inventory, host, task["vars"])
    return list(variables[f"__{role}_problems"])


def test_a_far_end_in_the_inventory_is_reached_at_its_tunnel_address_and_pinned_by_name() -> None:
    files = render.render_host(lab({"tunnel_forwards": [FORWARD]}), "near")
    (unit,) = [file for file in files if file.name == "tunnel-web.service"]
    argv = exec_start_argv(unit.text)
    assert argv[:6] == ["/usr/bin/ssh", "-f", "-N", "-F", "none", "-p"] and argv[6] == "2312"
    assert argv[-3:] == ["-L", "127.0.0.1:18000:127.0.0.1:8080", "10.0.2.2"]
    assert "StrictHostKeyChecking=yes" in argv and "HostKeyAlias=far" in argv and "ExitOnForwardFailure=yes" in argv
    assert "Restart=always\n" in unit.text and "Type=forking\n" in unit.text


def test_without_a_tunnel_address_the_far_end_is_its_ansible_host() -> None:
    far = {"ansible_host": "203.0.113.9"}
    (unit,) = [f for f in render.render_host(lab({"tunnel_forwards": [FORWARD]}, far), "near") if "tunnel" in f.name]
    argv = exec_start_argv(unit.text)
    assert argv[argv.index("-p") + 1] == "22" and argv[-1] == "203.0.113.9"


def test_the_far_end_key_is_restricted_to_the_forwards_made_there() -> None:
    both = {"name": "both", "host": "far", "local": [{"listen": "1", "to": "db:5432"}],
            "remote": [{"listen": "9000", "to": "127.0.0.1:22"}]}  # fmt: skip
    other = {"name": "other", "host": "x.example", "user": "t", "host_key": "ssh-ed25519 AAAA",
             "local": [{"listen": "2", "to": "a:1"}]}  # fmt: skip
    ends = render.HostVars(lab({"tunnel_forwards": [FORWARD, both, other]}), "near")["__tunnel_far_ends"]
    assert ends == [
        {"host": "far", "user": "provision-tunnel", "in_inventory": True,
         "options": 'restrict,port-forwarding,command="/bin/false",permitopen="127.0.0.1:8080",permitopen="db:5432",'
                    'permitlisten="127.0.0.1:9000"'},
        {"host": "x.example", "user": "t", "in_inventory": False,
         "options": 'restrict,port-forwarding,command="/bin/false",permitopen="a:1",permitlisten="127.0.0.1:1"'},
    ]  # fmt: skip


def test_good_tunnel_settings_pass() -> None:
    assert problems("tunnel", lab({"tunnel_forwards": [FORWARD]})) == []


@pytest.mark.parametrize(
    ("near", "expected"),
    [
        ({"tunnel_user": "root"}, "tunnel_user must not be root"),
        ({"tunnel_forwards": [{**FORWARD, "name": "Web_1"}]}, 'names must be lower-case letters, digits and "-"'),
        ({"tunnel_forwards": [FORWARD, FORWARD]}, "tunnel_forwards names must be unique"),
        ({"tunnel_forwards": [{"name": "idle", "host": "far"}]}, 'tunnel_forwards ["idle"] forward nothing'),
        ({"tunnel_forwards": [{**FORWARD, "host": "elsewhere.example"}]},
         'tunnel_forwards ["web"] go to hosts outside the inventory: give each its host_key'),
        ({"tunnel_forwards": [{**FORWARD, "host_key": "AAAA"}]}, "host_key must be one public key line"),
        ({"tunnel_forwards": [{**FORWARD, "local": [{"listen": "x", "to": "8080"}]}]},
         'listen must be "[address:]port" and to "host:port"'),
        ({"tunnel_start_limit_interval": 20}, "or a tunnel that never connects restarts forever"),
    ],
)  # fmt: skip
def test_bad_tunnel_settings_are_named(near: dict[str, Any], expected: str) -> None:
    found = problems("tunnel", lab(near))
    assert len(found) == 1 and expected in found[0], found


RELAY = {
    "nginx_preset": "relay",
    "nginx_tls": True,
    "nginx_relay_routes": [{"path": "/openai/", "upstream": "https://api.openai.com/v1/"}],
    "nginx_allow_from": ["203.0.113.0/24", "::1"],
}


def test_good_relay_settings_pass() -> None:
    assert problems("nginx", lab(RELAY)) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"nginx_tls": False}, "nginx_preset relay needs nginx_tls: true"),
        ({"nginx_allow_from": []}, "needs nginx_basic_auth_users or nginx_allow_from"),
        ({"nginx_relay_routes": []}, "nginx_preset relay needs nginx_relay_routes"),
        ({"nginx_allow_from": ["everyone"]}, 'nginx_allow_from entries must be addresses or CIDRs, not ["everyone"]'),
        ({"nginx_relay_routes": [{"path": "openai", "upstream": "https://a.example/"}]}, 'paths must start with "/"'),
        ({"nginx_relay_routes": [{"path": "/a/", "upstream": "http://a.example/"}]},
         'upstreams must be "https://host[:port][/path]", not ["http://a.example/"]'),
    ],
)  # fmt: skip
def test_bad_relay_settings_are_named(changes: dict[str, Any], expected: str) -> None:
    found = problems("nginx", lab({**RELAY, **changes}))
    assert len(found) == 1 and expected in found[0], found


def test_the_relay_passes_no_client_details_upstream_and_names_the_upstream() -> None:
    (conf,) = [f.text for f in render.render_host(lab(RELAY), "near") if f.name == "nginx.conf"]
    relay = conf[conf.index("location /openai/ {") :]
    assert "proxy_pass https://relay_1/v1/;" in relay and "proxy_set_header Host api.openai.com;" in relay
    assert "proxy_ssl_verify on;" in relay and "proxy_ssl_name api.openai.com;" in relay
    assert "proxy_set_header X-Forwarded-For" not in relay and "proxy_set_header X-Real-IP" not in relay
    assert "allow 203.0.113.0/24;\n        allow ::1;\n        deny all;" in conf


SHOWN = "ActiveState={}\nSubState={}\nResult={}\nNRestarts=4\nLoadState=loaded\n"


@pytest.mark.parametrize(
    ("shown", "journal", "expected"),
    [
        (SHOWN.format("active", "running", "success"), "", []),
        # systemd keeps the first failure's result when the limit stops its restarts; its journal says why.
        (SHOWN.format("failed", "failed", "exit-code"),
         "Host key verification failed.\ntunnel-a.service: Main process exited, code=exited, status=255/EXCEPTION\n"
         "tunnel-a.service: Start request repeated too quickly.\ntunnel-a.service: Failed with result 'exit-code'.\n"
         "Failed to start tunnel-a.service - SSH tunnel a to t@10.0.2.2:22.\n",
         ["tunnel-a.service is failed (failed, systemd gave up: start limit hit, 4 restarts); "
          "ssh said: Host key verification failed."]),
        (SHOWN.format("failed", "failed", "start-limit-hit"), "",
         ["tunnel-a.service is failed (failed, systemd gave up: start limit hit, 4 restarts)"]),
        (SHOWN.format("activating", "auto-restart", "exit-code"), "",
         ["tunnel-a.service is activating (auto-restart, result exit-code, 4 restarts)"]),
        ("ActiveState=inactive\nLoadState=not-found\n", "",
         ["tunnel-a.service is not installed: provision up writes it"]),
    ],
)  # fmt: skip
def test_a_tunnel_unit_that_is_not_active_is_reported(shown: str, journal: str, expected: list[str]) -> None:
    state = tunnel_checks.parse_unit_state(shown)
    # What ssh itself wrote: the unit's journal without systemd's lines about it (journalctl _SYSTEMD_UNIT=).
    ssh_said = "\n".join(line for line in journal.splitlines() if "tunnel-a.service" not in line)
    assert tunnel_checks.tunnel_state_problems("tunnel-a.service", state, journal, ssh_said) == expected


def test_local_forwards_listen_on_loopback_unless_told() -> None:
    forward = {"local": [{"listen": "18000"}, {"listen": "0.0.0.0:18001"}]}
    assert tunnel_checks.local_listens(forward) == ["127.0.0.1:18000", "0.0.0.0:18001"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"nginx_allow_from": ["10.0.0.0/8"], "nginx_basic_auth_users": [{"name": "a"}]}, 403),
        ({"nginx_allow_from": ["127.0.0.0/8", "::1"], "nginx_basic_auth_users": [{"name": "a"}]}, 401),
        ({"nginx_basic_auth_users": [{"name": "a"}]}, 401),
        ({"nginx_allow_from": ["127.0.0.1"]}, None),
    ],
)
def test_what_the_relay_must_answer_the_host_itself_without_credentials(
    settings: dict[str, Any], expected: int | None
) -> None:
    assert serving_checks.relay_expected_status(settings) == expected
