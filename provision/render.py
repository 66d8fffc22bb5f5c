"""Render the project's templates for one inventory host, exactly as Ansible's template module would.

This is the only module that imports jinja2, and it does so inside the functions that need it. Variables
for a host are every role's defaults (lowest precedence), then the host's variables from the inventory
(which already merge group_vars and host_vars), then inventory_hostname.
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
    output: Callable[[Vars], str]  # the rendered file's name
    applies: Callable[[Vars], bool]


@dataclass(frozen=True)
class RenderedFile:
    name: str
    text: str


RENDERABLE: tuple[Renderable, ...] = (
    Renderable(
        template_var="inference_unit_template",
        output=lambda v: f"{v['inference_name']}.service",
        applies=lambda v: True,
    ),
    Renderable(
        template_var="nginx_conf_template",
        output=lambda v: "nginx.conf",
        applies=lambda v: True,
    ),
)


def render_host(inventory: Inventory, host: str, out_dir: Path | None = None) -> list[RenderedFile]:
    """Render every template that applies to `host`; write the files into out_dir when given."""
    if host not in inventory.hosts:
        raise UsageError(
            f"host {host!r} is not in inventory {paths.display(inventory.path)} (hosts: {', '.join(inventory.hosts)})"
        )
    variables = HostVars(inventory, host)
    rendered = []
    for item in RENDERABLE:
        if item.applies(variables):
            text = _render(variables, str(variables[item.template_var]))
            rendered.append(RenderedFile(name=item.output(variables), text=text))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for file in rendered:
            (out_dir / file.name).write_text(file.text, encoding="utf-8")
    return rendered


def role_defaults() -> dict[str, Any]:
    """Every role's defaults/main.yml merged, roles in name order."""
    merged: dict[str, Any] = {}
    for defaults in sorted(paths.ROLES.glob("*/defaults/main.yml")):
        merged.update(argcheck.role_defaults(defaults.parent.parent))
    return merged


class HostVars(Mapping[str, Any]):
    """A host's variables, templated on first use like Ansible's ("/etc/{{ inference_name }}.env").

    Resolving lazily means a variable nobody renders may refer to things only a live run has (facts).
    """

    def __init__(self, inventory: Inventory, host: str) -> None:
        self.raw: dict[str, Any] = {
            **role_defaults(),
            **inventory.hostvars.get(host, {}),
            "inventory_hostname": host,
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
                return self.env.from_string(node).render(self.context(node))
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
