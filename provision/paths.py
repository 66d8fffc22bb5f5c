"""Where the project's data lives: ansible.cfg, the playbooks, templates and example inventories.

PROVISION_HOME, when set, names it (a checkout, a test tree). Otherwise an installed wheel (pip install, pipx)
carries them inside the package, in provision/_data/ (setup.py copies them there), and an editable install
(scripts/setup.sh) uses the repository checkout the package directory sits in.
"""

import configparser
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from provision.errors import UsageError

PACKAGE = Path(__file__).resolve().parent


def root(package: Path = PACKAGE) -> Path:
    """PROVISION_HOME, else the copy a wheel installed next to the package, else the checkout around it."""
    override = os.environ.get("PROVISION_HOME")
    if override:
        return Path(override).expanduser().resolve()
    installed = package / "_data"
    return installed if (installed / "playbooks").is_dir() else package.parent


ROOT = root()
# True for a wheel's copy (pip install, pipx): nothing may be written there (site-packages can be read-only and is
# replaced by the next upgrade), so files a command makes go to the working directory instead.
INSTALLED = ROOT == PACKAGE / "_data"
PLAYBOOKS = ROOT / "playbooks"
TEMPLATES = ROOT / "templates"
INVENTORIES = ROOT / "inventories"
ANSIBLE_CFG = ROOT / "ansible.cfg"
SITE_PLAYBOOK = PLAYBOOKS / "site.yml"
ROLES = PLAYBOOKS / "roles"


def ansible_setting(config: Path | str, section: str, key: str) -> str | None:
    """A setting as an ansible.cfg file writes it (read raw, as Ansible does), or None when it is not there."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config, encoding="utf-8")
    return parser.get(section, key, fallback=None)


def playbook_module(relative: str) -> ModuleType:
    """A Python file of the Ansible project (relative to playbooks/), loaded once as a module.

    Logic that both the playbooks and provision need lives in the playbooks tree, which runs without this package
    (AWX, ansible-runner); provision loads that same file rather than keeping a copy.
    """
    name = "provision._playbooks." + relative.removesuffix(".py").replace("/", ".")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PLAYBOOKS / relative)
    assert spec is not None and spec.loader is not None, relative
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def example(path: Path) -> Path:
    """A relative path under inventories/ that names nothing here: the example inventory that came with provision
    (inventories/gcp, ...), so the README's commands work from any directory. Any other path as it is."""
    if path.is_absolute() or path.parts[:1] != ("inventories",) or path.exists():
        return path
    bundled = ROOT / path
    return bundled if bundled.exists() else path


def display(path: Path | str) -> str:
    """A path as the user should read it in a message: relative to the working directory when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def write_text(path: Path, text: str, option: str, parents: bool = False) -> None:
    """Write a file the user named on the command line; a failure is one line naming the option and the path."""
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{option}: cannot write {display(path)}: {exc.strerror}") from None


# The key provision installs for the admin user that `provision bootstrap` creates (made on first use).
PROJECT_KEY = Path(os.environ.get("PROVISION_KEY") or "~/.config/provision/id_ed25519")
