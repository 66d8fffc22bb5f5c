"""Render the project's templates for one inventory host, exactly as Ansible's template module would.

This is the only module that imports jinja2, and it does so inside the functions that need it. Variables
for a host are every role's defaults (lowest precedence), then the host's variables from the inventory
(which already merge group_vars and host_vars), then the roles' internal vars, then inventory_hostname and
what a task sets (each replica's unit name and port). Like the roles, it renders the inference units only for
hosts of the group serving.yml runs the inference role on, and nginx.conf only for the gateway group's hosts.
"""

import json
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision import argcheck, paths
from provision.errors import UsageError
from provision.inventory import Inventory

if TYPE_CHECKING:
    import jinja2

Vars = Mapping[str, Any]


@dataclass(frozen=True)
class Renderable:
    template_var: str  # the role variable holding the template's path, so a user's override wins
    role: str  # the role that writes the file: playbooks/serving.yml says on which hosts it runs
    instances: Callable[["HostVars"], list[tuple[str, Vars]]]  # (file name, the variables the role sets for it)


@dataclass(frozen=True)
class RenderedFile:
    name: str
    text: str


def _replica_units(variables: "HostVars") -> list[tuple[str, Vars]]:
    """One unit per replica, named and numbered by the inference role's own rule (__inference_units_wanted)."""
    return [
        (f"{name}.service", {"inference_name": name, "inference_port": port})
        for name, port in variables["__inference_units_wanted"]
    ]


RENDERABLE: tuple[Renderable, ...] = (
    Renderable(template_var="inference_unit_template", role="inference", instances=_replica_units),
    Renderable(template_var="nginx_conf_template", role="nginx", instances=lambda v: [("nginx.conf", {})]),
)
SERVING_PLAYBOOK = "serving.yml"


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
        for name, overrides in item.instances(variables):
            instance = HostVars(inventory, host, overrides)
            rendered.append(RenderedFile(name=name, text=_render(instance, str(instance[item.template_var]))))
    if out_dir is not None:
        for file in rendered:
            paths.write_text(out_dir / file.name, file.text, "--out", parents=True)
    return rendered


def render_groups() -> dict[str, str]:
    """role -> the hosts pattern of the play in playbooks/serving.yml that runs it (for the renderable roles)."""
    playbook = paths.PLAYBOOKS / SERVING_PLAYBOOK
    found = {use.role.name: use.hosts for use in argcheck.role_uses(playbook)}
    missing = sorted({item.role for item in RENDERABLE} - set(found))
    if missing:
        raise UsageError(f"{paths.display(playbook)}: no play runs the role(s) {', '.join(missing)}")
    return {item.role: found[item.role] for item in RENDERABLE}


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


class HostVars(Mapping[str, Any]):
    """A host's variables, templated on first use like Ansible's ("/etc/{{ inference_name }}.env").

    Resolving lazily means a variable nobody renders may refer to things only a live run has (facts).
    """

    def __init__(self, inventory: Inventory, host: str, task_vars: Vars | None = None) -> None:
        # Ansible's order, lowest first: role defaults, inventory, role vars (internal __names), task vars.
        self.raw: dict[str, Any] = {
            **role_defaults(),
            **inventory.hostvars.get(host, {}),
            **role_vars(),
            "inventory_hostname": host,
            **(task_vars or {}),
        }
        self.env = environment(native=True)
        self._resolved: dict[str, Any] = {}
        self._in_progress: list[str] = []

    def __getitem__(self, name: str) -> Any:
        if name not in self._resolved:
            if name not in self.raw:
                raise UsageError(f"variable {name} is not defined; set it in the inventory")
            if name in self._in_progress:
                raise UsageError(f"variable {name} refers to itself: {' -> '.join([*self._in_progress, name])}")
            self._in_progress.append(name)
            try:
                self._resolved[name] = self._template(self.raw[name], name)
            finally:
                self._in_progress.pop()
        return self._resolved[name]

    def __contains__(self, name: object) -> bool:
        return name in self.raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def context(self, source: str) -> dict[str, Any]:
        """The resolved variables a template source refers to; the rest stay undefined (and strict)."""
        from jinja2 import meta

        return {name: self[name] for name in meta.find_undeclared_variables(self.env.parse(source)) if name in self}

    def _template(self, node: Any, name: str) -> Any:
        import jinja2

        if isinstance(node, str) and ("{{" in node or "{%" in node):
            try:
                value = self.env.from_string(node).render(self.context(node))
                if isinstance(value, jinja2.Undefined):  # a native "{{ name }}" of an undefined name
                    str(value)  # raises the UndefinedError that names it
                return value
            except jinja2.TemplateError as exc:
                raise UsageError(f"variable {name}: {exc.message}; fix it in the inventory") from exc
        if isinstance(node, list):
            return [self._template(item, name) for item in node]
        if isinstance(node, dict):
            return {key: self._template(item, name) for key, item in node.items()}
        return node


def _render(variables: HostVars, template: str) -> str:
    import jinja2

    env = environment()
    try:
        assert env.loader is not None
        source, _, _ = env.loader.get_source(env, template)
        return env.get_template(template).render(variables.context(source))
    except jinja2.TemplateNotFound as exc:
        raise UsageError(
            f"template {template} not found under {paths.display(paths.TEMPLATES)}; "
            "fix the variable naming it or add the file"
        ) from exc
    except jinja2.UndefinedError as exc:
        raise UsageError(f"template {template}: {exc.message}; define it in the inventory") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise UsageError(f"template {exc.filename or template}:{exc.lineno}: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise UsageError(f"template {template}: {exc}") from exc


def environment(native: bool = False) -> "jinja2.Environment":
    """A Jinja environment with the whitespace rules and filters of Ansible's template module.

    native=True gives what Ansible gives a variable made of one expression: the value, not its text.
    """
    import jinja2
    import jinja2.nativetypes

    cls = jinja2.nativetypes.NativeEnvironment if native else jinja2.Environment
    env = cls(
        # Template paths are relative to templates/, or absolute (a user's own template).
        loader=jinja2.FileSystemLoader([str(paths.TEMPLATES), "/"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(
        {
            "bool": to_bool,
            "mandatory": mandatory,
            "quote": lambda value: shlex.quote(str(value)),
            "to_json": lambda value, **kw: json.dumps(value, **kw),
            "to_nice_json": lambda value, indent=4, **kw: json.dumps(value, indent=indent, sort_keys=True, **kw),
            "regex_replace": regex_replace,
            "zip": lambda value, *others: list(zip(value, *others, strict=False)),
        }
    )
    return env


def to_bool(value: Any) -> bool:
    """Ansible's `bool` filter: yes/on/1/true (any case) are true."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("yes", "on", "1", "true", "y", "t")


def mandatory(value: Any, msg: str | None = None) -> Any:
    import jinja2

    if isinstance(value, jinja2.Undefined):
        raise jinja2.UndefinedError(msg or "Mandatory variable not defined.")
    return value


def regex_replace(
    value: Any,
    pattern: str = "",
    replacement: str = "",
    ignorecase: bool = False,
    multiline: bool = False,
    count: int = 0,
) -> str:
    flags = (re.IGNORECASE if ignorecase else 0) | (re.MULTILINE if multiline else 0)
    return re.sub(pattern, replacement, str(value), count=count, flags=flags)
