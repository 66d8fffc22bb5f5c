"""Fixtures for the smoke suite; nothing heavy is imported here."""

from collections.abc import Callable
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "inventory_group(name): a check of a role that the playbooks run on that inventory group only"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out, not skip, the checks of a role on the hosts outside the group it runs on.

    The playbook leaves those hosts alone, so there is nothing to check there; a skip would only make
    "nothing skipped" (the rule for a provisioned inventory) untrue.  Group membership comes from the inventory,
    without connecting to the host.
    """
    kept, left_out = [], []
    for item in items:
        marker = item.get_closest_marker("inventory_group")
        callspec = getattr(item, "callspec", None)
        ansible = getattr(callspec.params.get("_testinfra_host") if callspec else None, "ansible", None)
        if marker and ansible is not None and marker.args[0] not in ansible.get_variables().get("group_names", []):
            left_out.append(item)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


NOTHING_TO_CHECK = "nothing_to_check"


@pytest.fixture
def nothing_to_check(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """For a check to say that it found nothing to check, and why: reported as such, not as a pass.

    The test still passes (nothing is wrong), but the terminal shows it as "nothing to check" with the reason,
    and the JUnit file carries the reason as the test case's nothing_to_check property. (Appended to the item's
    user_properties directly: record_property warns that xunit2, pytest's default, has no such property.)
    """
    return lambda reason: request.node.user_properties.append((NOTHING_TO_CHECK, reason))


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    if report.when == "call" and report.passed and _nothing_to_check(report):
        return "nothing to check", "n", "NOTHING TO CHECK"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for report in terminalreporter.stats.get("nothing to check", []):
        terminalreporter.write_line(f"NOTHING TO CHECK {report.nodeid}: {_nothing_to_check(report)}")


def _nothing_to_check(report: pytest.TestReport) -> str:
    return "; ".join(str(value) for name, value in report.user_properties if name == NOTHING_TO_CHECK)


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
