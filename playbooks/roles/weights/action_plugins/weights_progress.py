"""weights_progress: read, on the host, the progress file a running weights_pull writes; say it as data.

    path: the progress file (weights_pull's progress_file)

One shell command, not a module: under emulation a module run costs the host a second of CPU, CPU the download
needs. The command prints the file's first line (one JSON object with the pull's pid, a `summary` line and
"finished": true however the pull ends) and whether that pid still runs; this plugin, on the controller, turns
that into the result:

    summary:  the pull's progress line (bytes, rate, ETA), "" before the first
    started:  whether the pull has written its file
    finished: whether the pull has ended (it said so, or its pid is gone: killed)
    progress: the file's object as it was read ({} before the first)

It does not read Ansible's async job file, which Mitogen does not have.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# The first line of the file, then "alive" or "gone" for the pid in it. Shell builtins only.
_READ = (
    'p={path}; l=\'\'; if [ -s "$p" ]; then read -r l < "$p"; fi; printf \'%s\\n\' "$l"; '
    "pid=${{l##*'\"pid\": '}}; pid=${{pid%%[!0-9]*}}; "
    'if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then echo alive; else echo gone; fi'
)


def progress_of(stdout: str) -> dict[str, Any]:
    """The result for what the command printed: the file's first line, then alive or gone."""
    lines = [line.strip() for line in stdout.splitlines()]
    first = lines[0] if len(lines) > 1 else ""
    try:
        state = json.loads(first) if first else {}
    except ValueError:  # a line the pull is still writing
        state = {}
    if not isinstance(state, dict):
        state = {}
    started = bool(first)
    alive = bool(lines) and lines[-1] == "alive"
    return {
        "summary": str(state.get("summary") or ""),
        "started": started,
        "finished": started and (state.get("finished") is True or not alive),
        "progress": state,
    }


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("path",))
    _supports_check_mode = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        path = self._task.args.get("path")
        if not isinstance(path, str) or not path:
            raise AnsibleActionFail("weights_progress: path must name the progress file")
        run = self._low_level_execute_command(_READ.format(path=shlex.quote(path)))
        if run.get("rc") != 0:
            result.update(failed=True, msg=f"weights_progress: could not read {path}", stderr=run.get("stderr", ""))
            return result
        result.update(changed=False, **progress_of(run.get("stdout", "")))
        return result
