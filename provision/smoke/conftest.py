"""Fixtures for the smoke suite; nothing heavy is imported here."""

from typing import Any

import pytest


@pytest.fixture
def provision_vars(host: Any) -> dict[str, Any]:
    """Role defaults overlaid with the host's inventory variables (as the playbooks see them, minus facts)."""
    from provision.render import role_defaults

    return {**role_defaults(), **host.ansible.get_variables()}


@pytest.fixture
def inventory_dir(request: pytest.FixtureRequest) -> str:
    """The directory of the inventory under test: where relative lockfile paths start, as in the playbooks."""
    from pathlib import Path

    path = Path(str(request.config.getoption("ansible_inventory"))).resolve()
    return str(path if path.is_dir() else path.parent)
