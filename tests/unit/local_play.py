"""A playbook that runs on this machine (connection local), for the unit tests of real runs: each task does one
thing a test looks for, chosen by its tags. And the environment that runs `provision up` on such a playbook."""

import os
import shutil
from pathlib import Path

PLAYBOOK = """\
- name: Local play
  hosts: all
  gather_facts: false
  tasks:
    - name: Report the environment
      ansible.builtin.debug:
        msg: "{{ lookup('env', 'AWX_ISOLATED_DATA_DIR') }}\
|{{ lookup('env', 'ANSIBLE_CACHE_PLUGIN_CONNECTION') }}\
|{{ lookup('env', 'ANSIBLE_HOST_KEY_CHECKING') }}|{{ who | default('nobody') }}"
      tags: [report]
    - name: Change something
      ansible.builtin.command: "true"
      changed_when: true
      tags: [change, fail]
    - name: Fail
      ansible.builtin.fail:
        msg: deliberately
      tags: [never, fail]
    - name: Sleep
      ansible.builtin.command: sleep 60
      changed_when: false
      tags: [never, sleep]
    - name: Gather the minimal facts
      ansible.builtin.setup:
        gather_subset: ["!all", "min"]
      tags: [never, facts]
    - name: Report what the environment passes on
      ansible.builtin.debug:
        msg: "{{ lookup('env', 'SSH_AUTH_SOCK') }}|{{ lookup('env', 'PROVISION_TEST_TOKEN') | length }}"
      tags: [never, env]
"""


def provision_env(project: Path, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment for `provision up` with the test project as site.yml, and its own TMPDIR."""
    home = tmp_path / "home"
    (home / "playbooks").mkdir(parents=True)
    shutil.copy(project / "site.yml", home / "playbooks" / "site.yml")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    return {**os.environ, "PROVISION_HOME": str(home), "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}, scratch
