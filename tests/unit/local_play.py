"""A playbook that runs on this machine (connection local), for the unit tests of real runs: each task does one
thing a test looks for, chosen by its tags."""

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
