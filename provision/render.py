"""Render the project's templates for one inventory host with Ansible's own templating, as its template module does.

Variables for a host are every role's defaults (lowest precedence), then the host's variables from the inventory
(which already merge group_vars and host_vars), then the roles' internal vars, then Ansible's magic variables
(inventory_hostname, groups, hostvars, playbook_dir), what the play hands the role (the facts its pre_tasks'
entry points publish, then the role's `vars:` there, such as the inference endpoints nginx and Prometheus get) and
what a task sets (each replica's unit name and port).
Ansible's Templar templates them lazily and renders the file with the template module's settings, filters and
lookups. Like the roles, it renders the inference units only for hosts of the group serving.yml runs the
inference role on, nginx.conf only for the gateway group's hosts, and the OpenVPN client config (egress.yml) only
for hosts that set openvpn_client_remote.

This module and argcheck are the only ones that import Ansible's Python, inside the functions that need it.
"""

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from provision import argcheck, paths
from provision.errors import UsageError
from provision.inventory import Inventory

Vars = Mapping[str, Any]


@dataclass(frozen=True)
class Renderable:
    template_var: str  # the role variable holding the template's path, so a user's override wins
    source_var: str  # the role's internal variable that turns it into the file the template task reads
    role: str  # the role that writes the file: the play of `playbook` that runs it says on which hosts
    instances: Callable[["HostVars"], list[tuple[str, Vars]]]  # (file name, the variables the role sets for it)
    playbook: str = "serving.yml"  # the playbook whose play runs the role (its hosts pattern)


@dataclass(frozen=True)
class RenderedFile:
    name: str
    text: str
    template: Path  # the template file it was rendered from


def _replica_units(variables: "HostVars") -> list[tuple[str, Vars]]:
    """One unit per replica, named and numbered by the inference role's own rule (__inference_units_wanted)."""
    return [
        (f"{name}.service", {"inference_name": name, "inference_port": port})
        for name, port in variables["__inference_units_wanted"]
    ]


def _true(value: Any) -> bool:
    """A variable as Ansible's bool filter reads it."""
    return str(value).strip().lower() in ("true", "yes", "on", "1", "y", "t")


def _one(name: str) -> Callable[["HostVars"], list[tuple[str, Vars]]]:
    return lambda variables: [(name, {})]


def _on_gpu_hosts(name: str) -> Callable[["HostVars"], list[tuple[str, Vars]]]:
    """The file on hosts of the monitoring agent's GPU group only, when it is enabled, as the role includes dcgm.yml."""

    def instances(v: "HostVars") -> list[tuple[str, Vars]]:
        gpu_hosts = v["groups"].get(v["monitoring_agent_gpu_group"], [])
        return [(name, {})] if _true(v["monitoring_agent_enabled"]) and v["inventory_hostname"] in gpu_hosts else []

    return instances


def _alertmanager(variables: "HostVars") -> list[tuple[str, Vars]]:
    return [("alertmanager.yml", {})] if _true(variables["monitoring_server_alertmanager"]) else []


def _template(
    playbook: str, role: str, name: str, instances: Callable[["HostVars"], list[tuple[str, Vars]]]
) -> Renderable:
    """A role's template whose path is <role>_<name>_template and whose file is __<role>_<name>_src."""
    return Renderable(f"{role}_{name}_template", f"__{role}_{name}_src", role, instances, playbook)


def _tunnel_units(variables: "HostVars") -> list[tuple[str, Vars]]:
    """One unit per SSH tunnel, as the tunnel role loops over them (its loop variable __tunnel_forward)."""
    return [
        (f"tunnel-{forward['name']}.service", {"__tunnel_forward": forward})
        for forward in variables["__tunnel_forwards_full"]
    ]


def _openvpn_client_config(variables: "HostVars") -> list[tuple[str, Vars]]:
    """The client config, where the host configures a VPN server (the role leaves other hosts alone)."""
    if not variables["openvpn_client_remote"]:
        return []
    return [(f"{variables['openvpn_client_name']}.conf", {})]


RENDERABLE: tuple[Renderable, ...] = (
    Renderable("inference_unit_template", "__inference_unit_src", role="inference", instances=_replica_units),
    Renderable("nginx_conf_template", "__nginx_conf_src", role="nginx", instances=_one("nginx.conf")),
    Renderable(
        "tunnel_unit_template", "__tunnel_unit_src", role="tunnel", instances=_tunnel_units, playbook="tunnel.yml"
    ),
    _template("monitoring.yml", "monitoring_server", "config", _one("prometheus.yml")),
    _template("monitoring.yml", "monitoring_server", "rules", _one("provision-alerts.yml")),
    _template("monitoring.yml", "monitoring_server", "alertmanager", _alertmanager),
    _template("monitoring.yml", "monitoring_agent", "dcgm_exporter_unit", _on_gpu_hosts("dcgm-exporter.service")),
    _template("monitoring.yml", "monitoring_agent", "dcgm_counters", _on_gpu_hosts("dcgm-counters.csv")),
    _template("egress.yml", "openvpn_client", "conf", _openvpn_client_config),
)


def render_host(inventory: Inventory, host: str, out_dir: Path | None = None) -> list[RenderedFile]:
    """Render the files the serving roles write on `host`; write them into out_dir when given.

    A host outside the groups those roles run on gets none (render_groups says which groups those are).
    """
    if host not in inventory.hosts:
        raise UsageError(
            f"host {host!r} is not in inventory {paths.display(inventory.path)} (hosts: {', '.join(inventory.hosts)})"
        )
    groups = render_groups()
    variables = HostVars(inventory, host)
    rendered = []
    for item in RENDERABLE:
        if host not in inventory.select(groups[item.role]):
            continue
        handed = handed_over(inventory, host, paths.PLAYBOOKS / item.playbook, item.role)
        for name, overrides in item.instances(HostVars(inventory, host, handed) if handed else variables):
            instance = HostVars(inventory, host, {**handed, **overrides})
            source = Path(instance[item.source_var])
            text = instance.render_file(source, str(instance[item.template_var]))
            rendered.append(RenderedFile(name=name, text=text, template=source))
    if out_dir is not None:
        for file in rendered:
            paths.write_text(out_dir / file.name, file.text, "--out", parents=True)
    return rendered


# A private key or an OpenVPN static key (tls-crypt, tls-auth) in PEM armour: its body is what must not be shown.
SECRET_BLOCK = re.compile(
    r"^(?P<begin>-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY|OpenVPN Static key V\d+)-----\n)"
    r"(?P<body>.*?)^(?P<end>-----END (?P=kind)-----)$",
    re.M | re.S,
)


def mask_secrets(text: str) -> str:
    """The text for the screen: the bodies of private and static keys replaced by one line (--out writes them)."""

    def masked(match: re.Match[str]) -> str:
        lines = match["body"].count("\n")
        count = f"{lines} line" if lines == 1 else f"{lines} lines"
        return f"{match['begin']}(secret: {count}, masked on screen; --out writes them)\n{match['end']}"

    return SECRET_BLOCK.sub(masked, text)


def render_groups() -> dict[str, str]:
    """role -> the hosts pattern of the play that runs it, in the playbook its Renderable names."""
    groups = {}
    for name in sorted({item.playbook for item in RENDERABLE}):
        playbook = paths.PLAYBOOKS / name
        # The main entry point's play: another play may include one of the role's entry points (nginx's ports
        # in firewall.yml, the inference endpoints for nginx and Prometheus) on other hosts.
        uses = argcheck.role_uses(playbook)
        found = {use.role.name: use.hosts for use in uses if use.entry_point == "main"}
        missing = sorted({item.role for item in RENDERABLE if item.playbook == name} - set(found))
        if missing:
            raise UsageError(f"{paths.display(playbook)}: no play runs the role(s) {', '.join(missing)}")
        groups.update({item.role: found[item.role] for item in RENDERABLE if item.playbook == name})
    return {item.role: groups[item.role] for item in RENDERABLE}


_INCLUDE_ROLE = ("include_role", "ansible.builtin.include_role")
_SET_FACT = ("set_fact", "ansible.builtin.set_fact")


def handed_over(inventory: Inventory, host: str, playbook: Path, role: str) -> dict[str, Any]:
    """What the play of `playbook` that runs `role` hands it on `host`, as a run does: the facts that its pre_tasks'
    include_role entry points publish (set_fact tasks, which change nothing; with the include's vars), then the
    `vars:` of the role's entry, which refer to those facts. Empty where the play hands over nothing."""
    play = next(
        (
            entry
            for entry in yaml.safe_load(playbook.read_text(encoding="utf-8")) or []
            if isinstance(entry, dict)
            and any(argcheck.role_entry_name(item) == role for item in entry.get("roles") or [])
        ),
        None,
    )
    if play is None:
        return {}
    facts: dict[str, Any] = {}
    for task in play.get("pre_tasks") or []:
        include = next((task[key] for key in _INCLUDE_ROLE if key in task), None)
        if not isinstance(include, dict):
            continue
        tasks_from = str(include.get("tasks_from") or "main").removesuffix(".yml")
        tasks_file = paths.ROLES / str(include["name"]) / "tasks" / f"{tasks_from}.yml"
        for inner in yaml.safe_load(tasks_file.read_text(encoding="utf-8")) or []:
            published = next((inner[key] for key in _SET_FACT if key in inner), None)
            if not isinstance(published, dict):
                raise UsageError(
                    f"{paths.display(playbook)}: render follows entry points that only set facts, and "
                    f"{paths.display(tasks_file)} does more; make it publish facts only"
                )
            scope = HostVars(inventory, host, {**facts, **(task.get("vars") or {})})
            facts.update({name: scope.template(value, f"fact {name}") for name, value in published.items()})
    entry = next(item for item in play["roles"] if argcheck.role_entry_name(item) == role)
    handed = entry.get("vars") if isinstance(entry, dict) else None
    return {**facts, **(handed or {})}


def role_defaults() -> dict[str, Any]:
    """Every role's defaults/main.yml merged, roles in name order."""
    return _every_role(argcheck.role_defaults, "defaults")


def role_vars() -> dict[str, Any]:
    """Every role's vars/main.yml (internal __names) merged, roles in name order."""
    return _every_role(argcheck.role_vars, "vars")


def _every_role(read: Callable[[Path], dict[str, Any]], folder: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for role in sorted(path.parent for path in paths.ROLES.glob(f"*/{folder}")):
        merged.update(read(role))
    return merged


class Variables(Mapping[str, Any]):
    """Variables as Ansible's Templar sees them: each templated on first use, with Ansible's filters and lookups.

    Resolving lazily means a variable nobody renders may refer to things only a live run has (facts).
    """

    def __init__(self, raw: Vars) -> None:
        self.raw: dict[str, Any] = dict(raw)
        self._templar = _templar(self.raw)

    def __getitem__(self, name: str) -> Any:
        if name not in self.raw:
            raise UsageError(f"variable {name} is not defined; set it in the inventory")
        return self.template(self.raw[name], f"variable {name}")

    def __contains__(self, name: object) -> bool:
        return name in self.raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def template(self, value: Any, what: str) -> Any:
        """Template a value with these variables; a failure names the variable at fault, else `what`."""
        from ansible.errors import AnsibleError

        try:
            return self._templar.template(_trusted(value))
        except AnsibleError as exc:
            raise self._usage_error(exc, what, "fix it in the inventory") from exc

    def render_file(self, source: Path, shown_as: str) -> str:
        """The text Ansible's template module writes for `source` (trim_blocks, no lstrip_blocks, newlines kept)."""
        from ansible.errors import AnsibleError
        from ansible.template import generate_ansible_template_vars, trust_as_template

        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(
                f"template {shown_as} not found under {paths.display(paths.TEMPLATES)}; "
                "fix the variable naming it or add the file"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"template {shown_as}: cannot read {paths.display(source)} ({exc})") from exc
        # As the module: its template_* variables over the task's, and ansible_managed unless the user set it.
        template_vars = generate_ansible_template_vars(path=shown_as, fullpath=str(source))
        if "ansible_managed" in self.raw:
            del template_vars["ansible_managed"]
        variables = {**_trusted(self.raw), **template_vars}
        templar = self._templar.copy_with_new_env(searchpath=[str(source.parent)], available_variables=variables)
        try:
            result = templar.template(trust_as_template(text), escape_backslashes=False, overrides=TEMPLATE_MODULE)
        except AnsibleError as exc:
            raise self._usage_error(exc, f"template {shown_as}", "define it in the inventory") from exc
        return "" if result is None else str(result)

    def _usage_error(self, exc: Exception, what: str, fix: str) -> UsageError:
        """One line naming the variable whose value failed (Ansible gives only its text), else `what`."""
        message = str(exc).splitlines()[0]
        failed = getattr(exc, "obj", None)
        names = [name for name, raw in self.raw.items() if isinstance(failed, str) and raw == failed]
        if "Recursive loop detected" in message:
            return UsageError(f"{f'variable {names[0]}' if names else what} refers to itself; fix it in the inventory")
        if names:
            return UsageError(f"variable {names[0]}: {message}; fix it in the inventory")
        line = getattr(exc.__cause__, "lineno", None)  # a Jinja syntax error in the template file itself
        if isinstance(line, int) and what.startswith("template "):
            return UsageError(f"{what}:{line}: {getattr(exc.__cause__, 'message', message)}")
        return UsageError(f"{what}: {message}; {fix}")


# The template module's defaults (ansible.builtin.template with no options).
TEMPLATE_MODULE = {"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"}


def render_template(source: Path, variables: Vars) -> str:
    """The text Ansible's template module writes for `source` with exactly these variables."""
    return Variables(variables).render_file(source, str(source))


class HostVars(Variables):
    """A host's variables as a play of the serving roles sees them (no facts)."""

    def __init__(self, inventory: Inventory, host: str, task_vars: Vars | None = None) -> None:
        # Ansible's order, lowest first: role defaults, inventory, role vars (internal __names), magic, task vars.
        super().__init__(
            {
                **role_defaults(),
                **inventory.hostvars.get(host, {}),
                **role_vars(),
                **_magic_vars(inventory, host),
                **(task_vars or {}),
            }
        )


def _magic_vars(inventory: Inventory, host: str) -> dict[str, Any]:
    """The variables Ansible sets itself that a template may use (other hosts' variables are their inventory's)."""
    groups = {name: list(members) for name, members in inventory.groups.items()}
    groups.setdefault("all", list(inventory.hosts))
    return {
        "inventory_hostname": host,
        "inventory_hostname_short": host.split(".")[0],
        "group_names": sorted(name for name, members in groups.items() if host in members and name != "all"),
        "groups": groups,
        "hostvars": {other: _OtherHost(inventory, other) for other in inventory.hosts},
        "playbook_dir": str(paths.PLAYBOOKS),
    }


class _OtherHost(Mapping[str, Any]):
    """hostvars[name]: that host's inventory variables, templated on access in its own context (as Ansible does)."""

    def __init__(self, inventory: Inventory, host: str) -> None:
        self._inventory, self._host = inventory, host
        self._raw: dict[str, Any] | None = None

    @property
    def raw(self) -> dict[str, Any]:
        if self._raw is None:
            inventory, host = self._inventory, self._host
            magic = {k: v for k, v in _magic_vars(inventory, host).items() if k != "hostvars"}
            self._raw = {**inventory.hostvars.get(host, {}), **magic}
        return self._raw

    def __getitem__(self, name: str) -> Any:
        return _templar(self.raw).template(_trusted(self.raw[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


def _templar(variables: Vars) -> Any:
    _load_ansible()
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    return Templar(loader=DataLoader(), variables=_trusted(variables))


@cache
def _load_ansible() -> None:
    """Ansible as a run sees it: the project's ansible.cfg (read once, on import) and every plugin and collection.

    ANSIBLE_CONFIG is what tools.ansible_env() gives every run, set only while Ansible reads its settings.
    """
    saved = os.environ.get("ANSIBLE_CONFIG")
    if paths.ANSIBLE_CFG.is_file():
        os.environ["ANSIBLE_CONFIG"] = str(paths.ANSIBLE_CFG)
    try:
        import ansible.constants  # noqa: F401  (reads the settings)
        from ansible.plugins.loader import init_plugin_loader

        init_plugin_loader()
    finally:
        if saved is None:
            os.environ.pop("ANSIBLE_CONFIG", None)
        else:
            os.environ["ANSIBLE_CONFIG"] = saved


def _trusted(node: Any) -> Any:
    """Mark strings as templates, as Ansible marks what it reads from the inventory and the roles' YAML."""
    from ansible.template import trust_as_template

    if isinstance(node, str):
        return trust_as_template(node)
    if isinstance(node, list):
        return [_trusted(item) for item in node]
    if isinstance(node, dict):
        return {key: _trusted(value) for key, value in node.items()}
    return node
