"""Where the project's data lives.

The package is installed editable from the repository, so the playbooks, templates and inventories sit
next to the package directory. PROVISION_HOME points somewhere else (a checkout, a test tree).
"""

import os
from pathlib import Path


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


# The key provision installs for the admin user that `provision bootstrap` creates (made on first use).
PROJECT_KEY = Path(os.environ.get("PROVISION_KEY") or "~/.config/provision/id_ed25519")
