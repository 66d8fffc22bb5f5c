"""Smoke checks for the serving roles: replicas on hosts of the inference group, nginx on the gateway group."""

from typing import Any

import pytest

from provision.smoke import serving_checks


def test_every_replica_runs_and_answers(host: Any, provision_vars: dict[str, Any]) -> None:
    if "inference" not in provision_vars.get("group_names", []):
        pytest.skip("not in the inference group")
    assert serving_checks.replica_problems(host, provision_vars) == []


def test_gateway_config_valid_and_streams_unbuffered(host: Any, provision_vars: dict[str, Any]) -> None:
    if "gateway" not in provision_vars.get("group_names", []):
        pytest.skip("not in the gateway group")
    assert serving_checks.gateway_problems(host, provision_vars) == []
