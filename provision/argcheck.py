"""Check every role's variables against its meta/argument_specs.yml on the controller, before any connection.

Ansible checks a role's variables when the role starts (the validate_argument_spec task it puts first in the
role), on every host: a wrong value in a late role is found after the earlier roles ran everywhere. This runs
the same validator (ansible.module_utils.common.arg_spec.ArgumentSpecValidator) before anything connects: for
each play of the playbook (followed through import_playbook), on the hosts its `hosts:` pattern and --limit
select, for each role it applies and with the variables the role would see there -- its defaults and vars,
the inventory's (group_vars and host_vars, as ansible-inventory merged them), the play's vars, -e, and the
role's parameters.

A Jinja template or a vault-encrypted value is not checked here: resolving it may need facts or secrets (in
a list or mapping, a stand-in of the type its spec wants takes its place, so the rest is checked). The on-host
check still covers it, and events.py names the variable when that check fails.

Besides render (Ansible's Templar), this is the only module that imports ansible (its light module_utils), inside
the function that needs it.
"""

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from provision import paths
from provision.errors import UsageError
from provision.inventory import Inventory

if TYPE_CHECKING:
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible.module_utils.errors import AnsibleValidationErrorMultiple

# Keys of an argument spec entry that describe its sub-options: left out for the check of the value itself.
_NESTED_KEYS = frozenset(
    {"options", "mutually_exclusive", "required_together", "required_one_of", "required_if", "required_by"}
)
# Keys of a `roles:` entry that are Ansible keywords; the others are the role's parameters.
_ROLE_KEYWORDS = frozenset(
    {
        "role",
        "name",
        "tags",
        "when",
        "vars",
        "become",
        "become_user",
        "become_method",
        "delegate_to",
        "environment",
        "ignore_errors",
        "any_errors_fatal",
        "check_mode",
        "diff",
        "no_log",
        "collections",
        "public",
        "allow_duplicates",
    }
)
_IMPORT_PLAYBOOK = ("import_playbook", "ansible.builtin.import_playbook")
_ROLE_TASKS = (
    "include_role",
    "import_role",
    "ansible.builtin.include_role",
    "ansible.builtin.import_role",
)
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
_ARTICLES = {"int": "an int", "str": "a string", "bool": "a bool (true or false)", "dict": "a mapping"}
_HOSTS_SHOWN = 5
# What stands in, inside a list or mapping, for a value only a run can resolve: one of the type its spec wants.
_STAND_INS: dict[str, Any] = {"int": 0, "float": 0.0, "bool": False, "list": [], "dict": {}, "bits": 0, "bytes": 0}


class _Unresolved(Exception):
    """A value only a live run can resolve (a template, vault)."""


@dataclass(frozen=True)
class RoleUse:
    """A role as a play applies it."""

    role: Path
    hosts: str  # the play's host pattern
    entry_point: str = "main"  # an import/include_role's tasks_from, or main
    tags: frozenset[str] = frozenset()  # from import_playbook, the play and the role's entry
    play_vars: Mapping[str, Any] = field(default_factory=dict, hash=False)
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Problem:
    hosts: tuple[str, ...]
    variable: str
    text: str  # what was given, what is allowed and where the value came from

    def __str__(self) -> str:
        shown = ", ".join(self.hosts[:_HOSTS_SHOWN])
        if len(self.hosts) > _HOSTS_SHOWN:
            shown += f" and {len(self.hosts) - _HOSTS_SHOWN} more"
        return f"{shown}: {self.variable}: {self.text}"


def preflight(
    inventory: Inventory,
    playbook: Path,
    *,
    limit: str | None = None,
    skip_tags: Iterable[str] = (),
    extravars: Mapping[str, Any] | None = None,
) -> None:
    """Raise a UsageError with one line per problem (and a last line saying nothing was contacted)."""
    problems = check(inventory, playbook, limit=limit, skip_tags=skip_tags, extravars=extravars)
    if problems:
        count = f"{len(problems)} invalid role variable{'s' if len(problems) > 1 else ''}"
        raise UsageError("\n".join([*map(str, problems), f"{count}; nothing was contacted"]))


def check(
    inventory: Inventory,
    playbook: Path,
    *,
    limit: str | None = None,
    skip_tags: Iterable[str] = (),
    extravars: Mapping[str, Any] | None = None,
) -> list[Problem]:
    """Every role variable that the role's argument spec would refuse on a host the run targets.

    --tags does not matter: Ansible tags a role's validation `always`, so it runs whatever --tags says.
    """
    targeted = set(inventory.select(limit)) if limit else set(inventory.hosts)
    skip = frozenset(skip_tags)
    found: dict[tuple[str, str], dict[str, None]] = {}  # (variable, problem) -> hosts
    for use in role_uses(playbook):
        options = argument_spec(use.role, use.entry_point)
        if not options or not _validated_with_tags(use.tags, skip):
            continue
        hosts = [host for host in inventory.select(use.hosts) if host in targeted]
        # Precedence, lowest first; the inventory's layer (the one that differs between hosts) goes between
        # these two. Each layer names where its values come from, for the message.
        below = [("the role's default", role_defaults(use.role))]
        above = [
            ("set by the play", use.play_vars),
            ("set in the role's vars", role_vars(use.role)),
            ("set by -e", extravars or {}),
            ("a role parameter", use.params),  # validate_argument_spec's provided_arguments win over all
        ]
        for name, spec in options.items():
            spec_json = json.dumps(spec, sort_keys=True, default=str)
            over = _topmost(name, above)
            shared = _problem(name, spec, spec_json, over or _topmost(name, below))
            for host in hosts:
                hostvars = inventory.hostvars.get(host, {})
                if over is None and name in hostvars:
                    text = _problem(name, spec, spec_json, ("set in the inventory", hostvars[name]))
                else:
                    text = shared
                if text is not None:
                    found.setdefault((name, text), {})[host] = None
    return [Problem(tuple(hosts), name, text) for (name, text), hosts in found.items()]


# ---- the playbooks: which roles run where --------------------------------------------------------------


def role_uses(playbook: Path, tags: frozenset[str] = frozenset()) -> list[RoleUse]:
    """The roles each play of a playbook applies, import_playbook followed, in the order they run.

    A `when:` on a play or role is not evaluated (it may need facts): such a role is checked on every host its
    play targets. A play whose `hosts:` is a template is left out.
    """
    uses: list[RoleUse] = []
    for entry in _yaml_file(playbook) or []:
        if not isinstance(entry, dict):
            continue
        entry_tags = tags | _tags(entry.get("tags"))
        imported = next((entry[key] for key in _IMPORT_PLAYBOOK if key in entry), None)
        if isinstance(imported, str):
            uses += role_uses(playbook.parent / imported, entry_tags)
            continue
        hosts = entry.get("hosts")
        pattern = ",".join(map(str, hosts)) if isinstance(hosts, list) else str(hosts or "")
        if not pattern or _is_template(pattern):
            continue  # only a live run knows these hosts
        play_vars: dict[str, Any] = entry["vars"] if isinstance(entry.get("vars"), dict) else {}
        for item in entry.get("roles") or []:
            role = item if isinstance(item, dict) else {"role": item}
            name = role_entry_name(item)
            params = {key: value for key, value in role.items() if key not in _ROLE_KEYWORDS}
            role_tags = entry_tags | _tags(role.get("tags"))
            uses.append(RoleUse(playbook.parent / "roles" / name, pattern, "main", role_tags, play_vars, params))
        for section in ("pre_tasks", "tasks", "post_tasks"):
            for name, entry_point, task_tags in _included_roles(entry.get(section), entry_tags):
                uses.append(RoleUse(playbook.parent / "roles" / name, pattern, entry_point, task_tags, play_vars))
    # A role that another role includes (live_config, from nginx) runs on that role's hosts.
    uses = [inner for use in uses for inner in (use, *_uses_inside(use, frozenset({use.role.name})))]
    return [use for use in uses if use.role.is_dir()]  # a collection's role is not ours to check


def role_entry_name(item: Any) -> str:
    """The role a play's `roles:` entry names: `- nginx`, `- role: nginx` or `- name: nginx`."""
    return str(item.get("role") or item.get("name") or "") if isinstance(item, dict) else str(item)


def _included_roles(tasks: object, tags: frozenset[str]) -> Iterator[tuple[str, str, frozenset[str]]]:
    """(role name, entry point, tags) of each import/include_role among the tasks."""
    for task, task_tags in _tasks(tasks, tags):
        action = next((task[key] for key in _ROLE_TASKS if key in task), None)
        if isinstance(action, dict) and action.get("name"):
            yield str(action["name"]), str(action.get("tasks_from") or "main"), task_tags


def _uses_inside(use: RoleUse, seen: frozenset[str]) -> Iterator[RoleUse]:
    """The roles that a role's own task files include, followed into them, on the hosts of the including role."""
    for tasks_file in sorted((use.role / "tasks").glob("*.yml")):
        for name, entry_point, task_tags in _included_roles(_yaml_file(tasks_file), use.tags):
            if name not in seen:
                inner = RoleUse(use.role.parent / name, use.hosts, entry_point, task_tags, use.play_vars)
                yield inner
                yield from _uses_inside(inner, seen | {name})


def _tasks(tasks: object, tags: frozenset[str]) -> Iterator[tuple[dict[str, Any], frozenset[str]]]:
    """Tasks with their inherited tags, blocks flattened."""
    for task in tasks if isinstance(tasks, list) else []:
        if not isinstance(task, dict):
            continue
        task_tags = tags | _tags(task.get("tags"))
        if "block" in task:
            for section in ("block", "rescue", "always"):
                yield from _tasks(task.get(section), task_tags)
        else:
            yield task, task_tags


def _tags(value: object) -> frozenset[str]:
    items = value if isinstance(value, list) else [value] if value else []
    return frozenset(tag.strip() for item in items for tag in str(item).split(",") if tag.strip())


def _validated_with_tags(tags: frozenset[str], skip: frozenset[str]) -> bool:
    """Whether the role's validation task runs: Ansible tags it `always` plus the tags it inherits.

    So --tags never leaves it out; --skip-tags does when it names one of them (Taggable.evaluate_tags).
    """
    if "all" in skip:
        return "always" not in skip
    return (tags | {"always"}).isdisjoint(skip) and "tagged" not in skip


# ---- the roles: argument specs, defaults and vars ---------------------------------------------------------


@cache
def argument_spec(role: Path, entry_point: str = "main") -> dict[str, dict[str, Any]]:
    """The options of a role's entry point ({} when the role has no spec for it)."""
    path = role / "meta/argument_specs.yml"
    specs = (_yaml_file(path) if path.is_file() else None) or {}
    entry = (specs.get("argument_specs") or {}).get(entry_point) if isinstance(specs, dict) else None
    return dict(entry.get("options") or {}) if isinstance(entry, dict) else {}


@cache
def role_defaults(role: Path) -> dict[str, Any]:
    """A role's defaults/main.yml."""
    return _vars_file(role / "defaults/main.yml")


@cache
def role_vars(role: Path) -> dict[str, Any]:
    """A role's vars/main.yml (its internal __names, such as the ssh role's algorithm table)."""
    return _vars_file(role / "vars/main.yml")


def _vars_file(path: Path) -> dict[str, Any]:
    loaded = (_yaml_file(path) if path.is_file() else None) or {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{paths.display(path)}: expected a mapping of variables")
    return loaded


@cache
def _yaml_file(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as exc:
        raise UsageError(f"{paths.display(path)}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{paths.display(path)}: not valid YAML ({str(exc).splitlines()[0]})") from exc


# ---- one variable ---------------------------------------------------------------------------------------


def _topmost(name: str, layers: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[str, Any] | None:
    """(where, value) from the layer of highest precedence that sets the variable, or None."""
    return next(((where, variables[name]) for where, variables in reversed(layers) if name in variables), None)


def _problem(name: str, spec: Mapping[str, Any], spec_json: str, found: tuple[str, Any] | None) -> str | None:
    """What is wrong with the variable's value, or None (also when it cannot be told here)."""
    if found is None:
        return _judge(name, spec_json, None, "")
    source, value = found
    try:
        value = _plain(value, spec)
    except _Unresolved:
        return None
    return _judge(name, spec_json, json.dumps(value, sort_keys=True, default=str), source)


@cache
def _judge(name: str, spec_json: str, given: str | None, source: str) -> str | None:
    """_problem's verdict, cached: most hosts share most values."""
    spec = json.loads(spec_json)
    params = {} if given is None else {name: json.loads(given)}
    value = params.get(name)
    origin = f" ({source})" if source else ""
    top = {key: item for key, item in spec.items() if key not in _NESTED_KEYS}
    errors = _validate(name, json.dumps(top, sort_keys=True), params).errors
    if errors:
        error, kind = errors[0], type(errors[0]).__name__
        if kind == "RequiredError":
            return "is required and not set"
        if kind == "ArgumentTypeError":
            return f"{_shown(value, spec)} is not {_a(spec.get('type', 'str'))}{origin}"
        if kind == "ElementError":
            return f"{_shown(value, spec)} has an item that is not {_a(spec.get('elements', 'str'))}{origin}"
        if kind == "ArgumentValueError" and "choices" in spec:
            allowed = ", ".join(repr(choice) for choice in spec["choices"])
            if isinstance(value, list):
                bad = ", ".join(repr(item) for item in value if item not in spec["choices"])
                return f"{bad} not allowed; each item must be one of {allowed}{origin}"
            return f"{_shown(value, spec)} is not one of {allowed}{origin}"
        return f"{error.msg}{origin}"
    nested = _validate(name, spec_json, params).messages
    return f"{'; '.join(nested)}{origin}" if nested else None


def _validate(name: str, spec_json: str, params: dict[str, Any]) -> "AnsibleValidationErrorMultiple":
    """The errors Ansible's validator finds, called as validate_argument_spec calls it."""
    result = _validator(name, spec_json).validate(params, validate_role_argument_spec=True)
    return result.errors


@cache
def _validator(name: str, spec_json: str) -> "ArgumentSpecValidator":
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    return ArgumentSpecValidator({name: json.loads(spec_json)})


def _plain(value: Any, spec: Mapping[str, Any]) -> Any:
    """The value as the validator would get it at run time, or _Unresolved when only a run can tell.

    Inside a list or mapping, a value only a run can tell is replaced by one its own spec accepts, so the rest
    of the container is still checked.
    """
    if _unresolved(value):
        raise _Unresolved
    return _stand_in(value, spec)


def _stand_in(value: Any, spec: Mapping[str, Any]) -> Any:
    if _unresolved(value):
        kind = spec.get("type", "str")
        if spec.get("choices"):
            return spec["choices"][0] if kind != "list" else []
        return value if isinstance(value, str) and kind in ("str", "path", "raw") else _STAND_INS.get(kind, "")
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:  # ansible-inventory's form of !unsafe: the text as it is
            return value["__ansible_unsafe"]
        options = spec.get("options") or {}
        return {key: _stand_in(item, options.get(key, {"type": "raw"})) for key, item in value.items()}
    if isinstance(value, list):
        element = {key: spec[key] for key in ("options", "choices") if key in spec}
        element["type"] = spec.get("elements", "raw")
        return [_stand_in(item, element) for item in value]
    return value


def _unresolved(value: Any) -> bool:
    """A Jinja template, or a vault-encrypted value as ansible-inventory shows it."""
    return (isinstance(value, str) and _is_template(value)) or (isinstance(value, dict) and "__ansible_vault" in value)


def _is_template(text: str) -> bool:
    return any(marker in text for marker in _TEMPLATE_MARKERS)


def _shown(value: Any, spec: Mapping[str, Any]) -> str:
    """A value for a message: a scalar as it is, unless it is no_log or meant for a list or mapping (which may
    hold secrets, like inference_env); those and containers by their kind only."""
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    if spec.get("no_log") or spec.get("type") in ("list", "dict"):
        return _a(type(value).__name__)
    return repr(value)


def _a(kind: str) -> str:
    return _ARTICLES.get(kind, f"a {kind}")
