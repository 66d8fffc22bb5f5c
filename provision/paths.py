"""Where the project's data lives.

The package is installed editable from the repository, so the playbooks, templates and inventories sit
next to the package directory. PROVISION_HOME points somewhere else (a checkout, a test tree).
"""

import os
from pathlib import Path

from provision.errors import UsageError


def _root() -> Path:
    override = os.environ.get("PROVISION_HOME")
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parent.parent


ROOT = _root()
PLAYBOOKS = ROOT / "playbooks"
TEMPLATES = ROOT / "templates"
INVENTORIES = ROOT / "inventories"
ANSIBLE_CFG = PLAYBOOKS / "ansible.cfg"
SITE_PLAYBOOK = PLAYBOOKS / "site.yml"
ROLES = PLAYBOOKS / "roles"


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
