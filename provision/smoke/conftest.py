"""Fixtures for the smoke suite; nothing heavy is imported here."""

from typing import Any

import pytest


@pytest.fixture
def provision_vars(host: Any) -> dict[str, Any]:
    """Role defaults overlaid with the host's inventory variables (as the playbooks see them, minus facts)."""
    from provision.render import role_defaults

    return {**role_defaults(), **host.ansible.get_variables()}
