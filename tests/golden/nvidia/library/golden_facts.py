#!/usr/bin/python
"""Test-only module: returns the facts it is given as the host's facts, so the nvidia role's platform choice
can be rendered for platforms this machine is not (tests/golden/test_nvidia_plan.py)."""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={"facts": {"type": "dict", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, ansible_facts=module.params["facts"])


if __name__ == "__main__":
    main()
