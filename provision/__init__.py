"""provision: turn cloud VMs into LLM-inference hosts with Ansible playbooks run through ansible-runner."""

__version__ = "0.1.0"
