"""Smoke checks for the monitoring roles: exporters on every host when the inventory has a monitoring group,
Prometheus on the hosts of that group."""

from collections.abc import Callable
from typing import Any

import pytest

from provision.smoke import monitoring_checks


@pytest.fixture
def variables(provision_vars: dict[str, Any]) -> Any:
    """The role defaults and the host's variables, templated as a play would (listen addresses refer to others)."""
    from provision.render import Variables

    return Variables(provision_vars)


def test_exporters_answer_on_their_address_only(
    host: Any, variables: Any, nothing_to_check: Callable[[str], None]
) -> None:
    groups = host.ansible.get_variables().get("groups", {})
    if not groups.get("monitoring"):
        nothing_to_check("the inventory has no monitoring group, so no host runs exporters")
        return
    gateway = "gateway" in host.ansible.get_variables().get("group_names", [])
    assert monitoring_checks.exporter_problems(host, variables, gateway) == []


@pytest.mark.inventory_group("monitoring")
def test_prometheus_scrapes_every_target(host: Any, variables: Any) -> None:
    assert monitoring_checks.prometheus_problems(host, variables) == []
