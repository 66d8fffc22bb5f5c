"""Smoke checks for the serving roles: replicas on hosts of the inference group, nginx on the gateway group.

On other hosts they are left out (see conftest.py), as the playbooks leave those hosts alone.
"""

from typing import Any

import pytest

from provision.smoke import serving_checks


@pytest.mark.inventory_group("inference")
def test_every_replica_runs_and_answers(host: Any, provision_vars: dict[str, Any]) -> None:
    assert serving_checks.replica_problems(host, provision_vars) == []


@pytest.mark.inventory_group("gateway")
def test_gateway_config_valid_and_streams_unbuffered(host: Any, provision_vars: dict[str, Any]) -> None:
    assert serving_checks.gateway_problems(host, provision_vars) == []
