"""Preflight checks that run before anything connects to a host: the inventory and the requested tags.

Nothing here imports ansible: the inventory is parsed by the `ansible-inventory` command, so what we
check is exactly what ansible-playbook will see, and tags are found by a static scan of the playbooks.
"""

import fnmatch
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from provision import paths
from provision.errors import EnvironmentProblem, UsageError
from provision.tools import ansible_env, ansible_tool

YAML_SUFFIXES = frozenset({".yml", ".yaml"})
DATA_SUFFIXES = YAML_SUFFIXES | {".json"}
SPECIAL_TAGS = frozenset({"always", "never", "all", "tagged", "untagged"})


_SafeLoaderType = TypeVar("_SafeLoaderType", bound=yaml.constructor.SafeConstructor)


def _opaque_tags(base: type[_SafeLoaderType]) -> type[_SafeLoaderType]:
    """base, accepting Ansible's own tags (!vault, !unsafe, ...) as opaque values."""

    class Loader(base):  # type: ignore[valid-type,misc]
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return Loader


# A user's files: the pure-Python loader, whose error messages and positions our bad-input lines are written and
# tested against.
_Loader = _opaque_tags(yaml.SafeLoader)
# The tag scan of our own project's files on each run: libyaml's where PyYAML has it (the pure-Python one took
# 1.3 s of the controller's CPU per `provision up`).
_ScanLoader = _opaque_tags(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: tuple[str, ...]
    hostvars: dict[str, dict[str, Any]] = field(hash=False)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # group -> all its hosts

    def match(self, pattern: str) -> tuple[str, ...]:
        """Hosts named by a host or group name or glob (one item of a comma-separated --limit)."""
        found = [h for h in self.hosts if fnmatch.fnmatchcase(h, pattern)]
        for group, members in self.groups.items():
            if fnmatch.fnmatchcase(group, pattern):
                found += members
        return tuple(dict.fromkeys(found))

    def select(self, pattern: str) -> tuple[str, ...]:
        """The hosts an Ansible host pattern selects (a play's `hosts:`, a --limit), as ansible-playbook does.

        Terms are joined by "," (or ":"); each is a host or group name, a glob, a ~regex, optionally with a
        [n] or [m:n] subscript (counting a group's hosts in ansible-inventory's order, its own hosts first, which
        for nested groups may differ from ansible-playbook's). "&term" intersects and "!term" excludes, after
        every plain term is added.
        "@file" reads the terms from a file, one per line.
        """
        if pattern.startswith("@"):
            try:
                pattern = ",".join(Path(pattern[1:]).read_text(encoding="utf-8").split())
            except OSError as exc:
                raise UsageError(f"host pattern {pattern}: cannot read {pattern[1:]} ({exc.strerror})") from exc
        terms = _split_pattern(pattern)
        plain = [t for t in terms if t[0] not in "&!"] or ["all"]
        selected: list[str] = []
        for term in [*plain, *(t for t in terms if t[0] == "&"), *(t for t in terms if t[0] == "!")]:
            found = self._term_hosts(term[1:] if term[0] in "&!" else term)
            if term[0] == "!":
                selected = [h for h in selected if h not in found]
            elif term[0] == "&":
                selected = [h for h in selected if h in found]
            else:
                selected += [h for h in found if h not in selected]
        return tuple(selected)

    def _term_hosts(self, term: str) -> tuple[str, ...]:
        if term in self.hosts:
            return (term,)
        subscript = None if term.startswith("~") else _SUBSCRIPT.match(term)
        expression = subscript.group(1) if subscript else term
        try:
            regex = re.compile(expression[1:] if expression.startswith("~") else fnmatch.translate(expression))
        except re.error as exc:
            raise UsageError(f"host pattern {term!r}: not a valid regular expression ({exc})") from exc
        groups = [g for g in self.groups if regex.match(g)]
        found = [h for g in groups for h in self.groups[g]]
        if not groups or expression.startswith("~") or any(c in expression for c in ".?*["):
            found += [h for h in self.hosts if regex.match(h)]
        found = list(dict.fromkeys(found))
        if subscript is None or not found:
            return tuple(found)
        index, start, end = subscript.group(2, 3, 5)
        if index is not None:
            return (found[int(index)],) if -len(found) <= int(index) < len(found) else ()
        return tuple(found[int(start) : int(end) + 1 if end else None])


# Ansible's host pattern syntax (ansible.inventory.manager): a trailing [n] or [m:n] subscript, and the
# ":"-separated form of a pattern list, where brackets may hold a ":".
_SUBSCRIPT = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$")
_COLON_TERMS = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")


def _split_pattern(pattern: str) -> list[str]:
    """A host pattern's terms: split on "," or, without one, on ":" outside brackets."""
    terms = pattern.split(",") if "," in pattern else _COLON_TERMS.findall(pattern)
    return [term.strip() for term in terms if term.strip()]


def load_inventory(path: Path | str) -> Inventory:
    """Validate an inventory file or directory and return its hosts with their merged variables."""
    path = paths.example(Path(path))
    if not path.exists():
        raise UsageError(f"inventory {paths.display(path)}: no such file or directory")
    for data_file in _data_files(path):
        _check_syntax(data_file)
    listing = _ansible_inventory_list(path)
    groups = _groups(listing)
    hosts = tuple(dict.fromkeys([*groups.get("all", ()), *listing.get("_meta", {}).get("hostvars", {})]))
    if not hosts:
        raise UsageError(
            f"inventory {paths.display(path)} defines no hosts; list them under all.hosts (or a group's hosts:)"
        )
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    return Inventory(
        path=path,
        hosts=hosts,
        hostvars={h: dict(hostvars.get(h, {})) for h in hosts},
        groups=groups,
    )


def _data_files(path: Path) -> Iterator[Path]:
    if path.is_file():
        if path.suffix in DATA_SUFFIXES:
            yield path
        return
    for candidate in sorted(path.rglob("*")):
        if candidate.is_file() and candidate.suffix in DATA_SUFFIXES:
            yield candidate


def _check_syntax(data_file: Path) -> None:
    text = data_file.read_text(encoding="utf-8", errors="replace")
    where = paths.display(data_file)
    if data_file.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}:{exc.lineno}:{exc.colno}: {exc.msg}") from exc
        return
    try:
        yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise UsageError(f"{where}{position}: {problem}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: {str(exc).splitlines()[0]}") from exc


def _ansible_inventory_list(path: Path) -> dict[str, Any]:
    argv = [ansible_tool("ansible-inventory"), "-i", str(path.resolve()), "--list"]
    env = {**os.environ, **ansible_env()}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        source, reason = _inventory_failure(proc.stderr, path)
        raise UsageError(f"inventory {source}: {reason}")
    try:
        listing = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise UsageError(f"inventory {paths.display(path)}: bad JSON from ansible-inventory ({exc})") from exc
    if not isinstance(listing, dict):
        raise UsageError(f"inventory {paths.display(path)}: ansible-inventory printed unexpected output")
    return listing


_BLOCK = re.compile(r"^\[(?:WARNING|ERROR)\]: ", re.MULTILINE)
_PLUGIN_FAILURE = re.compile(r"Failed to parse inventory with '([\w.]+)' plugin: (.*)")
_SOURCE_FAILURE = re.compile(r"Completely failed to parse inventory source (.+)$", re.MULTILINE)


def _inventory_failure(stderr: str, path: Path) -> tuple[str, str]:
    """The file ansible could not parse and the first meaningful line of why."""
    failed = _SOURCE_FAILURE.search(stderr)
    source = failed.group(1).strip() if failed else str(path)
    reasons: dict[str, str] = {}
    for block in _BLOCK.split(stderr):
        match = _PLUGIN_FAILURE.match(block)
        if match and source in block:
            reasons.setdefault(match.group(1), match.group(2).removeprefix("Failed to parse inventory: "))
    preferred = ("yaml", "ini") if Path(source).suffix in DATA_SUFFIXES else ("ini", "yaml")
    for plugin in (*preferred, *reasons):
        if plugin in reasons and plugin != "auto":
            return paths.display(source), reasons[plugin]
    errors = [line.removeprefix("[ERROR]: ") for line in stderr.splitlines() if line.startswith("[ERROR]: ")]
    others = [line.strip() for line in stderr.splitlines() if line.strip()]
    reason = errors[0] if errors else (others[-1] if others else "ansible-inventory failed")
    return paths.display(source), reason.strip()


def _group_hosts(listing: dict[str, Any], group: str, visited: frozenset[str] = frozenset()) -> list[str]:
    """A group's hosts, its children's included, in listing order."""
    if group in visited:
        return []
    entry = listing.get(group) or {}
    found = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        found += _group_hosts(listing, child, visited | {group})
    return list(dict.fromkeys(found))


def _groups(listing: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    return {name: tuple(_group_hosts(listing, name)) for name in listing if not name.startswith("_")}


# ---- host patterns and variables ---------------------------------------------------------------------


def check_limit(inventory: Inventory, limit: str) -> None:
    """Every term of a --limit pattern (host or group name, glob, ~regex, subscript) must select some host.

    Ansible only warns about a term that matches nothing and runs on the rest (or stops with rc 1 when nothing is
    left); a mistyped exclusion (all:!db1) would even run on the host meant to be left out.
    """
    for term in _split_pattern(limit):
        name = term.lstrip("!&")
        if name and not inventory.select(name):
            raise UsageError(
                f"--limit {limit!r}: {name!r} matches no host or group in {paths.display(inventory.path)}; "
                "nothing was contacted"
            )


# Role variables whose value names an environment variable of the controller that a play reads.
CONTROLLER_ENV_VARIABLES = ("weights_token_env",)


def controller_env_names(inventory: Inventory, extravars: dict[str, Any]) -> tuple[str, ...]:
    """The controller environment variables the inventory (or -e) tells the playbooks to read."""
    values = [extravars.get(v) for v in CONTROLLER_ENV_VARIABLES]
    values += [hostvars.get(v) for hostvars in inventory.hostvars.values() for v in CONTROLLER_ENV_VARIABLES]
    return tuple(sorted({value for value in values if isinstance(value, str) and value.isidentifier()}))


# ---- tags -------------------------------------------------------------------------------------------


def known_tags(playbook: Path) -> frozenset[str]:
    """Every tag used anywhere in the playbook's project, plus Ansible's special tags.

    A static scan of every YAML file under the playbook's directory: roles, imported playbooks and task
    files are all there, so following import_playbook/include_role references is not needed.
    """
    if not playbook.is_file():
        raise EnvironmentProblem(
            f"playbook {paths.display(playbook)} not found; "
            "reinstall provision (its package carries the playbooks) or set PROVISION_HOME to a checkout"
        )
    tags: set[str] = set(SPECIAL_TAGS)
    for yml in sorted(playbook.parent.rglob("*")):
        if yml.suffix not in YAML_SUFFIXES or not yml.is_file():
            continue
        try:
            document = yaml.load(yml.read_text(encoding="utf-8"), Loader=_ScanLoader)
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # ansible-playbook reports a broken file properly; a tag scan should not
        tags.update(_collect_tags(document))
    return frozenset(tags)


def _collect_tags(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "tags":
                yield from _tag_values(value)
            yield from _collect_tags(value)
    elif isinstance(node, list):
        for item in node:
            yield from _collect_tags(item)


def _tag_values(value: object) -> Iterator[str]:
    items: Iterable[object] = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str | int):
            for tag in str(item).split(","):
                if tag.strip():
                    yield tag.strip()


def split_tags(values: Iterable[str]) -> tuple[str, ...]:
    """Flatten repeated and comma-separated tag options: ("a,b", "c") -> ("a", "b", "c")."""
    return tuple(tag.strip() for value in values for tag in value.split(",") if tag.strip())


def check_tags(tags: Iterable[str], skip_tags: Iterable[str], known: frozenset[str]) -> None:
    for tag in (*tags, *skip_tags):
        if tag not in known:
            listed = ", ".join(sorted(known - SPECIAL_TAGS)) or "none besides Ansible's special tags"
            raise UsageError(f"unknown tag '{tag}' (known: {listed})")
