"""The wheel's build hook: pyproject.toml holds the project's settings; this only adds its Ansible project.

The playbooks, templates and example inventories stay top-level in the repository (an ordinary Ansible project
next to the package). A wheel copies them into provision/_data/, so an installed provision (pip install, pipx)
finds them wherever it runs; an editable install (scripts/setup.sh) uses the checkout's own. provision/paths.py
says which is used.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("playbooks", "templates", "inventories")
# The Ansible project's settings, at its root as AWX and ansible-playbook look for it (paths.ANSIBLE_CFG).
FILES = ("ansible.cfg",)
# Never shipped: what a lab writes into the checkout (also in .gitignore), and Python's caches.
LEFT_OUT = shutil.ignore_patterns("__pycache__", "*.pyc", "*.retry")
LAB_FILES = ("inventories/lab/hosts.yml", "inventories/lab/group_vars/inference.yml")


class BuildWithAnsibleProject(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's own directories are used
        root = Path(__file__).resolve().parent
        data = Path(self.build_lib) / "provision" / "_data"
        for name in DATA:
            shutil.rmtree(data / name, ignore_errors=True)
            shutil.copytree(root / name, data / name, ignore=LEFT_OUT)
        for name in FILES:
            shutil.copy2(root / name, data / name)
        for generated in LAB_FILES:
            (data / generated).unlink(missing_ok=True)


setup(cmdclass={"build_py": BuildWithAnsibleProject})
