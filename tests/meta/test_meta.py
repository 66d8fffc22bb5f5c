"""Project-wide rules: every command has working help, every module imports on its own, the CLI stays
light, and every role's public variables are documented in its argument specs (and only those)."""

import ast
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

import provision
from provision import cli, paths
from testkit.wheel import build_wheel

PACKAGE = Path(provision.__file__).parent
HEAVY = ("ansible", "ansible_runner", "jinja2", "paramiko")


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli.cli))


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "provision" for p in COMMANDS])
def test_help_exits_0(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli.cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_every_test_directory_is_in_testpaths() -> None:
    """testpaths lists directories in the order they run: a new one left out would never run."""
    import tomllib

    config = tomllib.loads((paths.ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    with_tests = {p.parent.relative_to(paths.ROOT).as_posix() for p in (paths.ROOT / "tests").glob("*/test_*.py")}
    missing = with_tests - set(config["testpaths"])
    assert not missing, f"not in pyproject's testpaths: {missing}"


def test_every_command_is_walked() -> None:
    assert {
        ("up",),
        ("render",),
        ("test",),
        ("lab", "up"),
        ("lab", "down"),
        ("lab", "status"),
        ("lab", "ssh"),
    } <= set(COMMANDS)


MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_a_fresh_interpreter(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        cwd=paths.ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_cli_import_stays_light() -> None:
    code = f"import sys, provision.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.ROOT, check=True)
    assert result.stdout.strip() == "[]", f"importing provision.cli pulled in {result.stdout.strip()}"


def test_help_stays_light() -> None:
    code = (
        "import sys\nfrom provision import cli\n"
        "try:\n    cli.main(['up', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.ROOT, check=True)
    assert result.stderr.strip() == "[]"


def test_the_library_never_imports_click() -> None:
    """The CLI (provision/cli/) translates flags into library calls; everything else runs without Click."""
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(from|import) click\b", path.read_text(encoding="utf-8"), re.MULTILINE)
    }
    assert importers and all(name.startswith("cli/") for name in importers), importers
    outside = ("provision.__main__", "provision.cli")  # the entry points; smoke/ is a pytest suite of its own
    library = [m for m in MODULES if m not in outside and not m.startswith(("provision.cli.", "provision.smoke."))]
    code = f"import sys\nfor m in {library!r}: __import__(m)\nprint('click' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.ROOT, check=True)
    assert result.stdout.strip() == "False", "importing the library pulled in click"


def test_only_argcheck_and_render_import_ansibles_python() -> None:
    """The rest of provision runs Ansible's commands; argcheck uses its argument-spec validator in-process and
    render its Templar (so `provision render` prints what the template module writes). The strategy plugin is
    Ansible's to load (ansible-playbook imports it by path), not provision's, so it may use Ansible's config."""
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(from|import) ansible\b", path.read_text(encoding="utf-8"), re.MULTILINE)
    }
    assert importers == {"argcheck.py", "render.py", "strategy_plugins/provision_mitogen.py"}
    imported_by_provision = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(from|import) provision\.strategy_plugins\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert not imported_by_provision, imported_by_provision


# ---- the package carries what users run, and nothing that serves tests only ---------------------------

# Modules nothing in the package imports that belong there all the same: `python -m provision`, the testinfra
# suite `provision test` runs by path, and the strategy plugin Ansible loads by path (runner.PROVISION_STRATEGY_DIR);
# the last two are shipped as package data.
ENTRY_POINTS = ("provision.__main__", "provision.smoke.", "provision.strategy_plugins.")


def test_no_module_of_the_package_serves_only_tests() -> None:
    """A module that no other module of the package imports is there for tests or bench/ (a file server with
    faults, a throwaway lab): it belongs in testkit/, which no wheel carries."""
    sources = {module: (PACKAGE.parent / module.replace(".", "/")) for module in MODULES}
    texts = {
        module: (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text(encoding="utf-8")
        for module, path in sources.items()
    }

    def imported(module: str) -> bool:
        parent, _, leaf = module.rpartition(".")
        pattern = re.compile(
            rf"^\s*(from {re.escape(module)} import|import {re.escape(module)}\b"
            rf"|from {re.escape(parent)} import [^\n]*\b{leaf}\b)",
            re.MULTILINE,
        )
        return any(pattern.search(text) for other, text in texts.items() if other != module)

    unused = [m for m in MODULES if m != "provision" and not m.startswith(ENTRY_POINTS) and not imported(m)]
    assert unused == [], f"modules only tests or bench/ use (move them to testkit/): {unused}"


def test_the_wheel_carries_the_package_and_nothing_else(tmp_path: Path) -> None:
    """What `pip install .` installs: provision's own modules (and its Ansible project as data), no testkit/,
    tests/ or bench/."""
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
        modules = {
            ".".join(Path(name).with_suffix("").parts).removesuffix(".__init__")
            for name in names
            if name.endswith(".py") and not name.startswith("provision/_data/")
        }
    assert modules == set(MODULES)
    # The Ansible project's settings sit at its root there too (paths.ANSIBLE_CFG of an installed provision).
    assert {"provision/_data/ansible.cfg", "provision/_data/playbooks/site.yml"} <= set(names)


# ---- roles: defaults <-> argument specs ---------------------------------------------------------------

ROLES = sorted(path.parent.parent for path in paths.ROLES.glob("*/defaults/main.yml"))


def _defaults(role: Path) -> dict[str, object]:
    return yaml.safe_load((role / "defaults/main.yml").read_text(encoding="utf-8")) or {}


def _documented(role: Path) -> dict[str, dict[str, object]]:
    specs_file = role / "meta/argument_specs.yml"
    assert specs_file.is_file(), f"{specs_file.relative_to(paths.ROOT)} is missing"
    specs = yaml.safe_load(specs_file.read_text(encoding="utf-8")) or {}
    options: dict[str, dict[str, object]] = {}
    for entry_point in (specs.get("argument_specs") or {}).values():
        options.update(entry_point.get("options") or {})
    return options


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_role_defaults_match_argument_specs(role: Path) -> None:
    defaults, documented = set(_defaults(role)), set(_documented(role))
    assert defaults - documented == set(), "defaults without an entry in meta/argument_specs.yml"
    assert documented - defaults == set(), "argument specs without a default in defaults/main.yml"


# A spec's type -> the Python types its default may have in defaults/main.yml (YAML as loaded).
DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "path": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,),
    "dict": (dict,),
}  # fmt: skip


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_role_defaults_have_the_values_and_types_their_specs_say(role: Path) -> None:
    """A default stated in meta/argument_specs.yml is the one in defaults/main.yml, and each default is of its
    spec's type (a template string and null, resolved or checked at run time, excepted; a bool is no int)."""
    defaults = _defaults(role)
    for name, spec in _documented(role).items():
        value = defaults.get(name)
        if "default" in spec:
            stated = spec["default"]
            assert stated == value, f"{role.name}: {name}: the spec says {stated!r}, defaults/main.yml {value!r}"
        kind = str(spec.get("type", "str"))  # Ansible's default type
        allowed = DEFAULT_TYPES.get(kind)
        if allowed is None or value is None or (isinstance(value, str) and "{{" in value):
            continue
        right = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        assert right, f"{role.name}: {name}: {value!r} is not of type {kind}"


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_role_argument_specs_have_type_and_description(role: Path) -> None:
    for name, spec in _documented(role).items():
        assert spec.get("type"), f"{role.name}: {name} has no type"
        assert spec.get("description"), f"{role.name}: {name} has no description"


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_role_defaults_each_have_a_comment(role: Path) -> None:
    lines = (role / "defaults/main.yml").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"([A-Za-z_]\w*):", line)
        if match:
            assert index > 0 and lines[index - 1].startswith("#"), f"{role.name}: {match.group(1)} has no comment"


def test_the_whole_suite_collects_in_one_run() -> None:
    """CI runs unit, golden and integration tests in one pytest run; a module that only imports when its own
    directory runs alone (say, `from conftest import ...`, which names whichever conftest came first) breaks the
    whole run at collection, before any test."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=paths.ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


# ---- the Ansible project runs without provision, and its roles share only what is handed over -------------


def test_the_playbooks_never_import_provision() -> None:
    """AWX and ansible-runner run playbooks/ with ansible-core and its collections only: no plugin or module there
    may import this package (provision loads what it shares with them from there, paths.playbook_module)."""
    importers = []
    for path in paths.PLAYBOOKS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            importers += [f"{path.relative_to(paths.ROOT)}: {n}" for n in names if n.split(".")[0] == "provision"]
    assert importers == []


# Keys whose value Ansible evaluates as a bare Jinja expression.
BARE_EXPRESSIONS = ("when", "that", "changed_when", "failed_when", "until")
JINJA = re.compile(r"{{.*?}}|{%.*?%}", re.S)


def _expressions(node: object, key: str = "") -> Iterator[str]:
    """The Jinja a role's YAML evaluates: inside {{ }} / {% %}, and the bare expressions of when, that, ...

    Mapping keys are never reads: a task that includes another role with `vars: {other_x: ...}` hands it a value.
    """
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _expressions(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item, key)
    elif isinstance(node, str):
        yield from ([node] if key in BARE_EXPRESSIONS else JINJA.findall(node))


def _role_templates(role: Path) -> list[Path]:
    """The shared templates/ files a role renders: its <role>_*_template defaults name them."""
    return [
        paths.TEMPLATES / value
        for name, value in _defaults(role).items()
        if name.endswith("_template") and isinstance(value, str) and (paths.TEMPLATES / value).is_file()
    ]


def _reads_of_other_roles(role: Path) -> set[str]:
    public = {other.name: set(_defaults(other)) for other in ROLES if other != role}
    texts: list[str] = []
    for part in ("defaults", "vars", "tasks", "handlers"):
        for path in sorted((role / part).rglob("*.yml")):
            texts += _expressions(yaml.safe_load(path.read_text(encoding="utf-8")))
    for path in [*sorted((role / "templates").rglob("*.j2")), *_role_templates(role)]:
        texts += JINJA.findall(path.read_text(encoding="utf-8"))
    found = set()
    for text in texts:
        for match in re.finditer(r"(?<![\w])([a-z][a-z0-9_]*)", text):
            before = text[: match.start()]
            # x.name is an attribute of x, unless x is another host's variables (hostvars[host].name).
            if before.endswith(".") and not re.search(r"hostvars\[[^\]]*\]\.$", before):
                continue
            found |= {f"{other}: {match[1]}" for other, names in public.items() if match[1] in names}
    return found


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_a_role_reads_no_other_roles_variables(role: Path) -> None:
    """What roles share is handed over explicitly (play vars in playbooks/*.yml, the vars of an include_role, a
    role's documented output), never read from the owner's variables behind a `| default(...)` copy of its default:
    under AWX or with --tags the owner may not have run, and the copy drifts from the owner's default."""
    assert _reads_of_other_roles(role) == set()


def test_the_reads_rule_finds_a_read(tmp_path: Path) -> None:
    """The rule sees a read through another host's variables and in a bare `when`, and not a key handed over to
    an included role, an attribute of a loop item, or a name in a message outside {{ }}."""
    role = tmp_path / "probe"
    (role / "tasks").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "defaults/main.yml").write_text("probe_x: 1\n")
    tasks = [
        {"ansible.builtin.include_role": {"name": "nginx"}, "vars": {"nginx_port": "{{ probe_x }}"}},
        {"ansible.builtin.debug": {"msg": "set nginx_tls for {{ item.nginx_tls_port }}"}},
        {"ansible.builtin.debug": {"msg": "{{ hostvars[h].inference_port }}"}, "when": "nginx_tls | bool"},
    ]
    (role / "tasks/main.yml").write_text(yaml.safe_dump(tasks))
    assert _reads_of_other_roles(role) == {"inference: inference_port", "nginx: nginx_tls"}
