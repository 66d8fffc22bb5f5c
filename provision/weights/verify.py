"""Check the model files on hosts against their lockfiles (playbooks/weights_verify.yml), changing nothing.

Each host's weights_pull reports, per model, which files are OK, missing or corrupt; this collects those
reports from the run's events and says them one line per host and model.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision import play
from provision.events import Line, Status
from provision.runner import RunRequest, TaskEvent

PLAYBOOK = "weights_verify.yml"


@dataclass(frozen=True)
class ModelState:
    model: str
    ok: tuple[str, ...]
    missing: tuple[str, ...]
    corrupt: tuple[str, ...]


@dataclass(frozen=True)
class Verification:
    outcome: play.PlayOutcome
    reports: Mapping[str, tuple[ModelState, ...]]  # per host that reported, sorted by host


def verify(
    inventory: Path,
    limit: str | None = None,
    deep: bool = False,
    strategy: str = "mitogen",
    progress: Callable[[Line], None] = lambda line: None,
    note: Callable[[str], None] = lambda text: None,
    status: Callable[[Status], None] = lambda status: None,
    output: str = "auto",
) -> Verification:
    """Run the check; `deep` re-hashes every file instead of trusting its verification record. `progress`,
    `note`, `status` and `output` as play.run takes them."""
    reports: dict[str, tuple[ModelState, ...]] = {}

    def collect(event: TaskEvent) -> None:
        if event.kind in ("runner_on_ok", "runner_on_failed") and event.result.report is not None:
            reports[event.host] = states(event.result.report)

    request = RunRequest(
        inventory=inventory,
        playbook=PLAYBOOK,
        limit=limit,
        extravars={"weights_reverify": deep},
        strategy=strategy,
    )
    outcome = play.run(
        request, progress=progress, note=note, on_event=collect, lock_hosts=False, output=output, status=status
    )
    return Verification(outcome, dict(sorted(reports.items())))


def states(report: Mapping[str, Any]) -> tuple[ModelState, ...]:
    """weights_pull's report (model -> {ok, missing, corrupt}: lists of paths), typed."""
    return tuple(
        ModelState(
            model=str(name),
            ok=tuple(map(str, state.get("ok") or ())),
            missing=tuple(map(str, state.get("missing") or ())),
            corrupt=tuple(map(str, state.get("corrupt") or ())),
        )
        for name, state in report.items()
    )


def report_lines(reports: Mapping[str, tuple[ModelState, ...]]) -> list[str]:
    """One line per host and model: OK with a file count, or each missing and corrupt file."""
    lines = []
    for host, models in reports.items():
        for state in models:
            if state.missing or state.corrupt:
                bad = [f"missing {p}" for p in state.missing] + [f"corrupt {p}" for p in state.corrupt]
                lines.append(f"{host}  {state.model}: " + ", ".join(bad))
            else:
                lines.append(f"{host}  {state.model}: OK ({len(state.ok)} files)")
    return lines
