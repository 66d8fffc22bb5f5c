"""Rolling updates: `provision up --batch 1 --batch 25%` runs the whole site.yml on one batch of hosts at a time.

Ansible's `serial` would not do: site.yml is one play per concern, so a per-play `serial` runs base and disks on
every host before serving starts on the first batch. Here each batch is its own run (provision.play, --limit the
batch's hosts), so the hosts of later batches are untouched until their turn. The sizes follow `serial`'s list
semantics: each item is a number of hosts or a percentage of the selected hosts (rounded down, at least 1), and
the last item repeats until every host has had its turn.

Serving changes drain first. Before a batch runs, the gateways whose upstream holds a batch host (the `gateway`
group's hosts whose nginx_upstream_group has it, or the host itself, for its local replicas) are converged with
the nginx role alone (serving.yml --tags nginx) and `nginx_upstream_drained` naming the batch's hosts: nginx -t
checks the config and a reload marks their replicas `down`, so new requests go to the others while nginx's old
workers finish the streams in flight; the role then waits until nginx holds no connection to the drained
replicas, at most the drain timeout. The batch's own run gets the same list, so a gateway in the batch keeps them
drained. After the batch (its health gates are part of its run) the gateways are converged again with only the
failed hosts drained, and the next batch's hosts: the others rejoin, a failed host stays out and is reported, and
the next batch leaves in the same reload (one gateway run between two batches, not two; none after a batch
whose every host failed when no batch follows, as it would change nothing).

A batch fails when its failed (or unreachable) hosts are more than max_fail_percentage of it, Ansible's rule:
exceeding the percentage fails, equalling it does not. A failed batch stops the run. A stop signal (Ctrl-C,
SIGTERM) ends the run after ansible-playbook has stopped; the notes then name every host that may still be
drained and how to rejoin it.

The planning functions are pure (unit-tested); `run` does the I/O through provision.play. Never imports Click.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from provision.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from provision.events import Line, Status
    from provision.inventory import Inventory
    from provision.play import PlayOutcome
    from provision.runner import HostStats, RunRequest

# The inventory settings, for all the selected hosts alike (group_vars/all): the --batch and
# --max-fail-percentage flags win over them.
SIZES_VARIABLE = "provision_batches"
MAX_FAIL_VARIABLE = "provision_max_fail_percentage"
# The group whose hosts run nginx (serving.yml), the playbook and tag that converge it alone.
GATEWAY_GROUP = "gateway"
DRAIN_PLAYBOOK = "serving.yml"
DRAIN_TAG = "nginx"


@dataclass(frozen=True)
class Batches:
    sizes: tuple[str, ...]  # "1", "25%", ...: serial's list, the last repeating
    max_fail_percentage: int = 0  # a batch fails when more than this percentage of its hosts failed
    drain_timeout: int = 60  # seconds the streams in flight on a drained host get before its replicas restart


@dataclass(frozen=True)
class Report:
    """Where a rolling run stands: every selected host in exactly one of done, failed and untouched."""

    done: tuple[str, ...]
    failed: tuple[str, ...]
    untouched: tuple[str, ...]
    drained: tuple[str, ...]  # hosts that may still be marked down on a gateway (failed ones, or after a stop)
    gateways: tuple[str, ...]  # the gateways they may be drained on
    interrupted: tuple[str, ...] = ()  # the batch a stop signal cut short: neither done nor failed


# --- Planning (pure) ---------------------------------------------------------------------------------------------


def parse_size(text: str, where: str = "--batch") -> str:
    """A batch size as given ("3", "25%"), checked: a positive number of hosts or a percentage from 1 to 100."""
    value = text.strip()
    number = value[:-1] if value.endswith("%") else value
    if not number.isdigit() or int(number) < 1 or (value.endswith("%") and int(number) > 100):
        raise UsageError(f"{where} {text!r}: expected a number of hosts (1, 2, ...) or a percentage (1% to 100%)")
    return value


def size_of(size: str, total: int) -> int:
    """How many hosts a size stands for among `total`: a percentage rounds down but is at least 1 (Ansible's)."""
    if size.endswith("%"):
        return max(1, int(int(size[:-1]) / 100 * total))
    return int(size)


def plan(hosts: Sequence[str], sizes: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The hosts in batches, in their order: `sizes` in turn, the last repeating (Ansible's `serial` list)."""
    if not sizes:
        return (tuple(hosts),) if hosts else ()
    batches: list[tuple[str, ...]] = []
    start = 0
    while start < len(hosts):
        count = size_of(sizes[min(len(batches), len(sizes) - 1)], len(hosts))
        batches.append(tuple(hosts[start : start + count]))
        start += count
    return tuple(batches)


def too_many_failed(size: int, failed: int, max_fail_percentage: int) -> bool:
    """Whether a batch of `size` hosts with `failed` failures fails: their share exceeds the percentage (equal to it
    passes, as in Ansible; 0 lets no failure pass)."""
    return failed * 100 > max_fail_percentage * size


def gateways_in_front(inventory: Inventory, hosts: Iterable[str]) -> tuple[str, ...]:
    """The gateway hosts whose upstream holds a replica of one of `hosts`: those in their nginx_upstream_group, and
    a gateway's own local replicas. (Servers listed in nginx_upstream_servers are addresses, not hosts: not known.)"""
    wanted = set(hosts)
    found = []
    for gateway in inventory.groups.get(GATEWAY_GROUP, ()):
        group = str(inventory.hostvars.get(gateway, {}).get("nginx_upstream_group") or "")
        behind = {gateway, *inventory.groups.get(group, ())} if group else {gateway}
        if behind & wanted:
            found.append(gateway)
    return tuple(found)


def from_inventory(inventory: Inventory, hosts: Sequence[str], variable: str) -> Any:
    """The value of an inventory setting for `hosts`, None when none sets it; hosts that disagree are a UsageError."""
    values = {repr(inventory.hostvars.get(host, {}).get(variable)): host for host in hosts}
    if len(values) > 1:
        shown = ", ".join(f"{host}: {value}" for value, host in values.items())
        raise UsageError(f"{variable} differs between the selected hosts ({shown}); set it once, in group_vars/all")
    return inventory.hostvars.get(hosts[0], {}).get(variable) if hosts else None


def settings(
    inventory: Inventory, hosts: Sequence[str], sizes: Sequence[str], max_fail_percentage: int | None, drain: int
) -> Batches | None:
    """The run's batches: the flags, else the inventory's provision_batches; None for one run of every host."""
    if sizes:
        sizes = [parse_size(size) for size in sizes]
    else:
        configured = from_inventory(inventory, hosts, SIZES_VARIABLE)
        if configured in (None, "", []):
            if max_fail_percentage is not None:
                raise UsageError(f"--max-fail-percentage is for batches: add --batch, or set {SIZES_VARIABLE}")
            return None
        listed = configured if isinstance(configured, list) else [configured]
        sizes = [parse_size(str(size), SIZES_VARIABLE) for size in listed]
    if max_fail_percentage is None:
        configured = from_inventory(inventory, hosts, MAX_FAIL_VARIABLE)
        max_fail_percentage = 0 if configured is None else check_percentage(configured, MAX_FAIL_VARIABLE)
    return Batches(sizes=tuple(sizes), max_fail_percentage=max_fail_percentage, drain_timeout=drain)


def check_percentage(value: object, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) > 100:
        raise UsageError(f"{where} {value!r}: expected a percentage from 0 to 100")
    return int(text)


def report_lines(report: Report, inventory_path: str) -> list[str]:
    """The notes that end a rolling run that did not finish cleanly: one line each."""
    lines = [
        f"done: {', '.join(report.done) or 'none'}",
        f"failed: {', '.join(report.failed) or 'none'}",
        *([f"interrupted: {', '.join(report.interrupted)}"] if report.interrupted else []),
        f"never touched: {', '.join(report.untouched) or 'none'}",
    ]
    if report.drained:
        lines.append(
            f"still drained on {', '.join(report.gateways)}: {', '.join(report.drained)}; `provision up` again "
            f"finishes and rejoins them (`provision up -i {inventory_path} --tags {DRAIN_TAG} --limit "
            f"{','.join(report.gateways)}` rejoins them as they are)"
        )
    return lines


# --- The rolling run --------------------------------------------------------------------------------------------


def run(
    request: RunRequest,
    batches: Batches,
    checked: tuple[Inventory, tuple[str, ...]] | None = None,
    progress: Callable[[Line], None] = lambda line: None,
    note: Callable[[str], None] = lambda text: None,
    output: str = "auto",
    status: Callable[[Status], None] = lambda status: None,
) -> PlayOutcome:
    """Run the request's playbook one batch at a time (see the module's docstring); the outcome sums the batches.

    `checked` is play.check's answer for the request, when the caller has it: the checks run once, up front.
    `output` and `status` are play.run's, for each batch's run (the drains show per host: a few gateways)."""
    from provision import play
    from provision.runner import stop_signals

    inv, hosts = checked or play.check(request)
    planned = plan(hosts, batches.sizes)
    drained: list[str] = []  # hosts marked down on the gateways (the failed ones between batches)
    done: list[str] = []
    failed: list[str] = []
    stats: dict[str, HostStats] = {}
    total = len(planned)

    def stamp() -> str:
        return time.strftime("%H:%M:%S")

    def converge_gateways(batch: Sequence[str], down: Sequence[str], wait: int) -> PlayOutcome:
        gateways = gateways_in_front(inv, [*batch, *down])
        drain = replace(
            request,
            playbook=DRAIN_PLAYBOOK,
            limit=",".join(gateways),
            tags=(DRAIN_TAG,),
            skip_tags=(),
            extravars={**request.extravars, "nginx_upstream_drained": list(down), "nginx_drain_timeout": wait},
        )
        return play.run(drain, progress=progress, note=note, checked=inv)

    def stop(
        outcome: PlayOutcome,
        message: str,
        untouched: Sequence[str],
        maybe_drained: Sequence[str],
        interrupted: Sequence[str] = (),
    ) -> PlayOutcome:
        gateways = gateways_in_front(inv, maybe_drained) if maybe_drained and not request.check else ()
        report = Report(
            tuple(done), tuple(failed), tuple(untouched), tuple(maybe_drained) if gateways else (), gateways,
            tuple(interrupted),
        )  # fmt: skip
        for line in report_lines(report, str(request.inventory)):
            note(line)
        return replace(outcome, failed=tuple(failed), stats={**stats, **outcome.stats}, message=message)

    predrained = False  # the batch's hosts were drained by the gateway run that rejoined the batch before it
    with stop_signals() as stopped:
        for number, batch in enumerate(planned, 1):
            label = f"batch {number}/{total}"
            later = [host for later_batch in planned[number:] for host in later_batch]
            # In check mode nothing is drained (the nginx role would show every batch's hosts going down).
            in_front = gateways_in_front(inv, batch) if not request.check else ()
            down = list(dict.fromkeys([*drained, *batch])) if not request.check else []
            if stopped.signum is not None:
                left = down if predrained else drained
                return stop(_stopped(stopped.signum), _stop_message(stopped.signum), [*batch, *later], left)
            note(f"{label}: {', '.join(batch)}; start {stamp()}")
            if in_front and not predrained:
                note(f"{label}: draining {', '.join(batch)} on {', '.join(in_front)} (up to {batches.drain_timeout} s)")
                drain = converge_gateways(batch, down, batches.drain_timeout)
                if drain.code is not ExitCode.OK:
                    message = drain.message if drain.signal else f"draining {', '.join(batch)} failed: {drain.message}"
                    return stop(drain, message, [*batch, *later], down)
            if stopped.signum is not None:
                return stop(_stopped(stopped.signum), _stop_message(stopped.signum), [*batch, *later], down)
            extravars = {**request.extravars, "nginx_upstream_drained": down}
            ran = play.run(
                replace(request, limit=",".join(batch), extravars=extravars),
                progress=progress,
                note=note,
                checked=inv,
                output=output,
                status=status,
            )
            stats.update(ran.stats)
            if ran.signal is not None or stopped.signum is not None:
                cut = ran if ran.signal is not None else _stopped(stopped.signum or signal.SIGINT)
                return stop(cut, cut.message, later, down, batch)
            broke = set(ran.failed) | set(ran.unreachable)
            if ran.code is not ExitCode.OK and not broke:  # the run failed as a whole: every host of the batch did
                broke = set(batch)
            failed += [host for host in batch if host in broke]
            done += [host for host in batch if host not in broke]
            drained = [host for host in down if host in failed]
            over_budget = too_many_failed(len(batch), len(broke), batches.max_fail_percentage)
            # The next batch leaves the gateways in the same reload that rejoins this one: one gateway run between
            # two batches, not two (each is a playbook run on every gateway in front).
            upcoming = planned[number] if number < total and not over_budget else ()
            next_front = gateways_in_front(inv, upcoming) if upcoming and not request.check else ()
            next_down = list(dict.fromkeys([*drained, *upcoming])) if next_front else drained
            # No gateway run when it would change nothing: every host of the batch failed (they stay drained, as
            # they were) and no batch follows.
            rejoining = [host for host in batch if host not in broke] if in_front else []
            if rejoining or next_front:
                said = [f"{label}: rejoining {', '.join(rejoining)} on {', '.join(in_front)}"] if rejoining else []
                if next_front:
                    said.append(
                        f"batch {number + 1}/{total}: draining {', '.join(upcoming)} on {', '.join(next_front)} "
                        f"(up to {batches.drain_timeout} s)"
                    )
                note("; ".join(said))
                wait = batches.drain_timeout if next_front else 0
                gateways = converge_gateways([*batch, *upcoming], next_down, wait)
                if gateways.code is not ExitCode.OK:
                    what = [f"rejoining {', '.join(rejoining)}"] if rejoining else []
                    what += [f"draining {', '.join(upcoming)}"] if next_front else []
                    why = f"{' and '.join(what)} failed: {gateways.message}"
                    message = gateways.message if gateways.signal else why
                    return stop(gateways, message, later, list(dict.fromkeys([*down, *next_down])))
            predrained = bool(next_front)
            note(f"{label}: end {stamp()}" + (f"; failed: {', '.join(sorted(broke))}" if broke else ""))
            if over_budget:
                share = f"{len(broke)} of {len(batch)}, more than the {batches.max_fail_percentage}% allowed"
                message = f"{label} failed on {', '.join(sorted(broke))} ({share})"
                message += f"; stopped before {len(later)} more" if later else ""
                return stop(ran, message, later, drained)
    ended = play.PlayOutcome(code=ExitCode.OK, failed=(), unreachable=(), message="", stats={})
    if not failed:
        return replace(ended, stats=stats)
    budget = f"failed on {', '.join(failed)}, within the failure budget ({batches.max_fail_percentage}%)"
    return stop(replace(ended, code=ExitCode.FAILED), budget, (), drained)


def _stopped(signum: int) -> PlayOutcome:
    from provision import play
    from provision.runner import STOP_SIGNALS

    return play.PlayOutcome(
        code=STOP_SIGNALS.get(signal.Signals(signum), ExitCode.INTERRUPTED),
        failed=(),
        unreachable=(),
        message=_stop_message(signum),
        stats={},
        signal=signum,
    )


def _stop_message(signum: int) -> str:
    name = signal.Signals(signum).name if signum else "a signal"
    return f"stopped by {name} between batches; the notes above say where each host stands"
