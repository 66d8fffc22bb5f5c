"""fail_with_details: fail the host with a one-line message and, as data beside it, what the user should read.

Like ansible.builtin.fail, run on the controller (nothing reaches the host), with two more arguments:

    msg:     the reason, one line (required)
    details: lines to show below it, e.g. a unit's last journal lines (a list of strings, or one string)
    stage:   which step of a guarded change failed, as a word a program can match (e.g. guard, check)

The result carries them as `msg`, `details` (a list) and `stage`: provision shows the details indented below
the failure line, and no program has to split a message or match a task's name to find them.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("msg", "details", "stage"))
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self._task.args
        msg = args.get("msg")
        if not isinstance(msg, str) or not msg.strip():
            raise AnsibleActionFail("fail_with_details: msg must be a non-empty string")
        details = args.get("details") or []
        if isinstance(details, str):
            details = details.splitlines()
        if not isinstance(details, list):
            raise AnsibleActionFail("fail_with_details: details must be a list of strings or a string")
        result.update(failed=True, msg=msg, details=[str(line) for line in details])
        if args.get("stage"):
            result["stage"] = str(args["stage"])
        return result
