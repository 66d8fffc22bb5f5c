"""Finding the ansible commands that belong to this Python environment, and the environment they get."""

import os
import shutil
import sys
from pathlib import Path

from provision import paths
from provision.errors import EnvironmentProblem


def ansible_tool(name: str) -> str:
    """The path of an ansible command (ansible-playbook, ansible-inventory): ours first, then PATH.

    The commands installed with this package sit next to the interpreter, which need not be on PATH
    when the virtualenv is not activated.
    """
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which(name)
    if found is None:
        raise EnvironmentProblem(f"{name} not found next to {sys.executable} or on PATH; pip install ansible")
    return found


def ansible_env() -> dict[str, str]:
    """Variables every ansible command we start gets, on top of the user's environment."""
    env = {
        # A file no inventory plugin could parse is an error, not a warning followed by zero hosts.
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
        # Commands ansible starts itself (ansible-galaxy, ansible-config) come from the same environment.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    if paths.ANSIBLE_CFG.is_file():
        env["ANSIBLE_CONFIG"] = str(paths.ANSIBLE_CFG)
    return env
