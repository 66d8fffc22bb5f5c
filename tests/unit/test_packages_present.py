"""playbooks/action_plugins/packages_present.py: the package manager runs only when the database cannot say
every package is there.  On this machine's own dpkg database, in check mode (nothing is installed)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from provision import paths, runner
from provision.runner import RunRequest, TaskEvent

OURS = "every package is installed; the package manager was not run"


def _plugin():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "packages_present", paths.PLAYBOOKS / "action_plugins/packages_present.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_plain_names_are_answered_from_the_database() -> None:
    plugin = _plugin()
    assert plugin._wanted(["dpkg", "libc6:amd64", "nvidia-driver=535.309.01-1"], "apt") == {
        "dpkg": "",
        "libc6": "",
        "nvidia-driver": "535.309.01-1",
    }
    for name in ("nginx=1.22*", "python3 (>= 3.11)", "./local.deb", "http://example.org/x.deb", "a;rm -rf /", ""):
        assert plugin._wanted([name], "apt") is None, name
    answer = "installed dpkg 1.21.22\ninstalled nvidia-driver 535.309.01-1\nconfig-files foo 1.0\nunpacked bar 2.0\n"
    assert plugin._installed(answer) == {"dpkg": "1.21.22", "nvidia-driver": "535.309.01-1"}  # held or not
    assert plugin._installed("package baz is not installed\n") == {}


TASKS = """\
- hosts: all
  gather_facts: true
  gather_subset: ['!all']
  tasks:
    - name: Installed packages
      packages_present:
        name: [dpkg, coreutils]
        install_recommends: false
    - name: A version that is not the installed one
      packages_present:
        name: dpkg=0.0.0-not-a-version
      ignore_errors: true
    - name: A refresh of the lists that is always due
      packages_present:
        name: dpkg
        update_cache: true
      ignore_errors: true
    - name: A wildcard
      packages_present:
        name: dpkg*
      ignore_errors: true
"""


@pytest.mark.parametrize("strategy", runner.STRATEGIES)
def test_the_module_runs_only_where_a_package_may_be_missing(
    write: Callable[[str, str], Path], local_inventory: Path, strategy: str
) -> None:
    project = write("packages/site.yml", TASKS).parent
    (project / "action_plugins").symlink_to(paths.PLAYBOOKS / "action_plugins")
    seen: list[TaskEvent] = []
    request = RunRequest(inventory=local_inventory, project_dir=project, check=True, strategy=strategy)
    runner.run(request, seen.append)
    results = {e.task: e for e in seen if e.kind in ("runner_on_ok", "runner_on_failed")}
    installed = results["Installed packages"]
    assert installed.kind == "runner_on_ok" and installed.result.msg == OURS and not installed.result.changed
    for task in ("A version that is not the installed one", "A refresh of the lists that is always due", "A wildcard"):
        assert results[task].result.msg != OURS, task  # the package module (apt) answered
