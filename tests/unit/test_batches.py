"""provision.batches: rolling runs in batches. The planning as a table of cases; the orchestration as a real run of
real playbooks on this machine (connection local), whose tasks record what each run was asked to do."""

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from provision import batches, play
from provision.batches import Batches, Report
from provision.errors import ExitCode, UsageError
from provision.inventory import Inventory
from provision.play import PlayOutcome
from provision.runner import RunRequest

Write = Callable[[str, str], Path]


@pytest.mark.parametrize(
    ("hosts", "sizes", "expected"),
    [
        ("abc", ["1"], ["a", "b", "c"]),
        ("abcdefgh", ["1", "25%"], ["a", "bc", "de", "fg", "h"]),  # 25% of 8 is 2, repeated
        ("abcde", ["1", "2", "50%"], ["a", "bc", "de"]),  # 50% of 5 rounds down to 2
        ("abc", ["10%"], ["a", "b", "c"]),  # 10% of 3 rounds down to 0: at least 1
        ("abc", ["100%"], ["abc"]),
        ("abc", ["5"], ["abc"]),
        ("abc", [], ["abc"]),
        ("", ["1"], []),
    ],
)
def test_batches_follow_ansibles_serial_list(hosts: str, sizes: list[str], expected: list[str]) -> None:
    assert batches.plan(list(hosts), sizes) == tuple(tuple(batch) for batch in expected)


@pytest.mark.parametrize("text", ["0", "-1", "0%", "101%", "x", "1.5", "%", ""])
def test_a_bad_batch_size_is_one_clear_line(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--batch .*: expected a number of hosts \(1, 2, \.\.\.\) or a percentage"):
        batches.parse_size(text)


@pytest.mark.parametrize(
    ("size", "failed", "allowed", "fails"),
    [
        (1, 0, 0, False),
        (1, 1, 0, True),  # the default: any failure stops
        (4, 1, 25, False),  # exactly the percentage passes (Ansible: exceeding fails, equalling does not)
        (4, 2, 25, True),
        (3, 1, 33, True),  # 33.3% exceeds 33%
        (3, 1, 34, False),
        (2, 2, 100, False),
    ],
)
def test_a_batch_fails_when_its_failures_exceed_the_percentage(
    size: int, failed: int, allowed: int, fails: bool
) -> None:
    assert batches.too_many_failed(size, failed, allowed) is fails


def fleet(**hostvars: dict) -> Inventory:
    """gw1 fronts the inference group; gw2 fronts only itself; db is behind none."""
    return Inventory(
        path=Path("inventory.yml"),
        hosts=("gw1", "gw2", "i1", "i2", "db"),
        hostvars={"gw1": {"nginx_upstream_group": "inference"}, "gw2": {}, "i1": {}, "i2": {}, "db": {}} | hostvars,
        groups={"all": ("gw1", "gw2", "i1", "i2", "db"), "gateway": ("gw1", "gw2"), "inference": ("gw1", "i1", "i2")},
    )


@pytest.mark.parametrize(
    ("hosts", "gateways"),
    [(["i1"], ("gw1",)), (["gw2"], ("gw2",)), (["gw1"], ("gw1",)), (["db"], ()), (["i2", "gw2"], ("gw1", "gw2"))],
)
def test_the_gateways_in_front_of_hosts(hosts: list[str], gateways: tuple[str, ...]) -> None:
    assert batches.gateways_in_front(fleet(), hosts) == gateways


def test_the_flags_win_and_the_inventory_setting_is_one_for_all() -> None:
    same = {host: {"provision_batches": [1, "50%"], "provision_max_fail_percentage": 50} for host in ("i1", "i2")}
    inventory = fleet(**same)
    assert batches.settings(inventory, ["i1", "i2"], ["2"], None, 30) == Batches(("2",), 50, 30)
    assert batches.settings(inventory, ["i1", "i2"], [], 10, 30) == Batches(("1", "50%"), 10, 30)
    assert batches.settings(fleet(), ["i1", "i2"], [], None, 30) is None
    with pytest.raises(UsageError, match=r"^--max-fail-percentage is for batches"):
        batches.settings(fleet(), ["i1"], [], 10, 30)
    with pytest.raises(UsageError, match=r"^provision_batches differs between the selected hosts \(.*i1.*db"):
        batches.settings(inventory, ["i1", "db"], [], None, 30)
    with pytest.raises(UsageError, match=r"^provision_batches '0'"):
        batches.settings(fleet(i1={"provision_batches": 0}), ["i1"], [], None, 30)


def test_the_report_says_one_line_each_and_how_to_rejoin() -> None:
    lines = batches.report_lines(Report(("i1",), ("i2",), ("db",), ("i2",), ("gw1",)), "inv")
    assert lines == [
        "done: i1",
        "failed: i2",
        "never touched: db",
        "still drained on gw1: i2; `provision up` again finishes and rejoins them "
        "(`provision up -i inv --tags nginx --limit gw1` rejoins them as they are)",
    ]


# --- A real rolling run -----------------------------------------------------------------------------------------
# site.yml records each host's run and fails where `broken` is set; serving.yml's gateway play records what the
# nginx role would have been asked (nginx_upstream_drained, nginx_drain_timeout). Both append to one log, in order.

SITE = """\
- name: Site
  hosts: all
  gather_facts: false
  tasks:
    - name: Record the run
      ansible.builtin.shell: >-
        echo "site {{ inventory_hostname }} down={{ nginx_upstream_drained | join(',') }}" >> {{ log }}
      changed_when: true
    - name: Fail where broken
      ansible.builtin.fail:
        msg: broken on purpose
      when: broken | default(false)
"""
SERVING = """\
- name: Gateway
  hosts: gateway
  gather_facts: false
  tasks:
    - name: Record the drain
      ansible.builtin.shell: >-
        echo "nginx {{ inventory_hostname }} down={{ nginx_upstream_drained | join(',') }}
        wait={{ nginx_drain_timeout }}" >> {{ log }}
      changed_when: true
      tags: [nginx]
    - name: Wait as long as a slow drain would
      ansible.builtin.command: sleep 60
      changed_when: false
      when: nginx_drain_timeout | int == 99 and slow in nginx_upstream_drained
      tags: [nginx]
"""


def test_a_rolling_run_drains_runs_and_rejoins_each_batch_and_stops_at_a_failed_one(
    write: Write, tmp_path: Path
) -> None:
    project = write("project/site.yml", SITE).parent
    write("project/serving.yml", SERVING)
    log = tmp_path / "calls.log"
    local = f"ansible_connection: local, ansible_python_interpreter: {sys.executable}"
    inventory = write(
        "hosts.yml",
        f"all:\n  vars: {{log: {log}}}\n  hosts:\n    a: {{{local}}}\n    b: {{{local}, broken: true}}\n"
        f"    c: {{{local}}}\n  children:\n    gateway:\n      hosts:\n        a: {{nginx_upstream_group: inference}}\n"
        "    inference:\n      hosts: {a: null, b: null, c: null}\n",
    )
    notes: list[str] = []
    request = RunRequest(inventory=inventory, project_dir=project)
    outcome = batches.run(request, Batches(("1",), 0, 5), note=notes.append)
    assert log.read_text().splitlines() == [
        "nginx a down=a wait=5",  # batch 1 (a, the gateway itself): drained on its own upstream
        "site a down=a",  # its own run keeps it drained
        "nginx a down=b wait=5",  # a rejoined, and batch 2 (b) drained, in one gateway run
        "site b down=b",
    ]  # b failed: it stays out, as drained, with no gateway run that would change nothing; c never ran
    assert (outcome.code, outcome.failed) == (ExitCode.FAILED, ("b",))
    assert outcome.message == "batch 2/3 failed on b (1 of 1, more than the 0% allowed); stopped before 1 more"
    assert notes[0].startswith("batch 1/3: a; start ") and any(n.startswith("batch 1/3: end ") for n in notes)
    assert "batch 1/3: rejoining a on a; batch 2/3: draining b on a (up to 5 s)" in notes, notes
    assert not [n for n in notes if n.startswith("batch 2/3: rejoining")], notes  # b failed; the run stops
    assert notes[-4:] == [
        "done: a",
        "failed: b",
        "never touched: c",
        f"still drained on a: b; `provision up` again finishes and rejoins them (`provision up -i {inventory} --tags "
        "nginx --limit a` rejoins them as they are)",
    ]
    assert set(outcome.stats) == {"a", "b"}


def ctrl_c_in_a_slow_drain(write: Write, tmp_path: Path, slow: str) -> tuple[Path, PlayOutcome, list[str], float]:
    """A rolling run of a (the gateway) and b, one per batch, with a 99 s drain timeout; the drain that has `slow`
    among the drained hosts waits 60 s, and Ctrl-C comes 3 s into it: (inventory, outcome, notes, seconds)."""
    project = write("project/site.yml", SITE).parent
    write("project/serving.yml", SERVING)
    local = f"ansible_connection: local, ansible_python_interpreter: {sys.executable}"
    inventory = write(
        "hosts.yml",
        f"all:\n  vars: {{log: {tmp_path / 'calls.log'}, slow: {slow}}}\n"
        f"  hosts:\n    a: {{{local}}}\n    b: {{{local}}}\n"
        "  children:\n    gateway:\n      hosts:\n        a: {nginx_upstream_group: inference}\n"
        "    inference:\n      hosts: {a: null, b: null}\n",
    )
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if f"draining {slow}" in text:
            threading.Timer(3, os.kill, (os.getpid(), signal.SIGINT)).start()

    started = time.monotonic()
    outcome = batches.run(RunRequest(inventory=inventory, project_dir=project), Batches(("1",), 0, 99), note=note)
    return inventory, outcome, notes, time.monotonic() - started


def test_ctrl_c_during_a_drain_names_the_hosts_left_drained_and_how_to_rejoin(write: Write, tmp_path: Path) -> None:
    inventory, outcome, notes, seconds = ctrl_c_in_a_slow_drain(write, tmp_path, "a")
    assert seconds < 45, "the 60 s drain must have been cut short"
    assert outcome.code is ExitCode.INTERRUPTED and outcome.signal == signal.SIGINT
    assert notes[-4:] == [
        "done: none",
        "failed: none",
        "never touched: a, b",
        f"still drained on a: a; `provision up` again finishes and rejoins them (`provision up -i {inventory} --tags "
        "nginx --limit a` rejoins them as they are)",
    ]
    log = tmp_path / "calls.log"
    assert not log.exists() or "site" not in log.read_text(), "a batch ran after the stop"


def test_ctrl_c_while_one_batch_rejoins_and_the_next_drains_names_both(write: Write, tmp_path: Path) -> None:
    inventory, outcome, notes, _seconds = ctrl_c_in_a_slow_drain(write, tmp_path, "b")
    assert outcome.code is ExitCode.INTERRUPTED and outcome.signal == signal.SIGINT
    assert "batch 1/2: rejoining a on a; batch 2/2: draining b on a (up to 99 s)" in notes, notes
    assert notes[-4:] == [
        "done: a",
        "failed: none",
        "never touched: b",
        f"still drained on a: a, b; `provision up` again finishes and rejoins them (`provision up -i {inventory} "
        "--tags nginx --limit a` rejoins them as they are)",
    ]
    assert "site b" not in (tmp_path / "calls.log").read_text(), "a batch ran after the stop"


def test_bad_input_stops_before_any_batch(write: Write) -> None:
    inventory = write("hosts.yml", "all:\n  hosts:\n    a: {ansible_connection: local}\n")
    with pytest.raises(UsageError, match="'nothere' matches no host or group"):
        batches.run(RunRequest(inventory=inventory, limit="nothere"), Batches(("1",)))
    assert play.limited_inventory(inventory, "a")[1] == ("a",)
