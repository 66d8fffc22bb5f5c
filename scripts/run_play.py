"""Run one of provision's playbooks through the library alone, as `provision up` would, without the CLI.

    python scripts/run_play.py INVENTORY [--playbook site.yml] [--limit PATTERN] [--tags TAG,...] [--check]

Prints a line per task and host while it runs, then the outcome as one JSON line (exit code, failed and
unreachable hosts, message), and exits with the outcome's code. It checks that Click was never imported: what
the CLI does for a run is callable from Python (tests/integration/test_1b_library.py compares the two).
"""

import argparse
import json
import sys
from pathlib import Path

from provision import play, runner
from provision.errors import ProvisionError
from provision.events import Line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inventory", type=Path)
    parser.add_argument("--playbook", default="site.yml")
    parser.add_argument("--limit")
    parser.add_argument("--tags", default="")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    request = runner.RunRequest(
        inventory=args.inventory,
        playbook=args.playbook,
        limit=args.limit,
        tags=tuple(tag for tag in args.tags.split(",") if tag),
        check=args.check,
    )

    def progress(line: Line) -> None:
        print(line.text, flush=True)

    try:
        outcome = play.run(request, progress=progress, note=lambda text: print(f"note: {text}", file=sys.stderr))
    except ProvisionError as exc:  # bad input: one line, nothing contacted
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    assert "click" not in sys.modules, "the library imported click"
    summary = {
        "code": int(outcome.code),
        "failed": list(outcome.failed),
        "unreachable": list(outcome.unreachable),
        "message": outcome.message,
    }
    print(json.dumps(summary))
    return int(outcome.code)


if __name__ == "__main__":
    sys.exit(main())
