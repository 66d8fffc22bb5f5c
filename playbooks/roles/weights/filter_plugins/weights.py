"""weights_plan: the weights_models setting plus each model's lockfile, as the weights_pull module takes them.

Runs on the controller, so a broken lockfile stops the run before any host is touched, with the file and
key named.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

from provision.weights.lockfile import LockError, plan


def weights_plan(models: list[dict[str, Any]], base_dir: str, root: str, mirrors: list[str]) -> list[dict[str, Any]]:
    try:
        return plan(models, base_dir, root, mirrors)
    except LockError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"weights_plan": weights_plan}
