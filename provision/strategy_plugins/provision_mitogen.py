"""Mitogen's linear strategy, minus the setup of the login context that `become` only passes through.

`provision up` selects this plugin (ANSIBLE_STRATEGY=provision_mitogen) when Mitogen is installed. It is
Mitogen's own `mitogen_linear` with one change in how Mitogen connects. For a task with `become`, Mitogen starts
a Python on the host as the SSH user, then, through it, a second one under sudo; the task runs in the second.
Stock Mitogen prepares both the same way: it pushes Ansible's module_utils to each and has each import Mitogen's
task runner (and with it ansible.module_utils.basic) and fork a parent for later tasks. The first never runs a
task when every task of the run uses become (all of provision's plays do), so that work is wasted: ~2 s of a
lab VM's emulated CPU per run, and on a real host the round trips of that preparation's imports, which a
controller far from its hosts pays at 100-300 ms each. Here a context that is only passed through is connected
and nothing more; it is prepared the first time a task runs in it (a task with `become: false`).

Only what Mitogen 0.3.54 (the pinned version) has is patched, and only when all of it is there: with another
Mitogen, or one whose internals moved, this is plain `mitogen_linear`.
"""

from __future__ import annotations

import threading
from typing import Any

import ansible_mitogen.loaders
import ansible_mitogen.services
import ansible_mitogen.strategy
import ansible_mitogen.target
import mitogen.core
import mitogen.service

_ContextService = ansible_mitogen.services.ContextService
# Everything of ContextService's that _connect, _prepare and get below use (its instance attributes aside).
_NEEDED = (
    "_connect",
    "_wait_or_start",
    "_send_module_forwards",
    "_get_candidate_temp_dirs",
    "_update_lru",
    "_on_context_disconnect",
    "get",
)
# Set while get() connects a context that the next element of the stack is reached through.
_passing_through = threading.local()


def _connect(self: Any, key: str, spec: dict[str, Any], via: Any = None) -> dict[str, Any]:
    """ContextService._connect, without pushing modules to or running init_child in a pass-through context."""
    if not getattr(_passing_through, "on", False):
        return _stock_connect(self, key, spec, via)
    method = getattr(self.router, spec["method"])
    context = method(via=via, unidirectional=True, **spec["kwargs"])
    if via and spec.get("enable_lru"):
        self._update_lru(context, spec, via)
    mitogen.core.listen(context, "disconnect", lambda: self._on_context_disconnect(context))
    self._key_by_context[context] = key
    self._refs_by_context[context] = 0
    return {"context": context, "via": via, "init_child_result": None, "msg": None}


def _prepare(self: Any, response: dict[str, Any]) -> None:
    """What stock _connect does after connecting, done once for a context first used as a pass-through."""
    with self._lock:
        lock = self.__dict__.setdefault("_provision_prepare_locks", {}).setdefault(
            response["context"], threading.Lock()
        )
    with lock:  # one context's preparation, not the service lock: other hosts connect meanwhile
        if response["init_child_result"] is None:
            context = response["context"]
            self._send_module_forwards(context)
            response["init_child_result"] = context.call(
                ansible_mitogen.target.init_child,
                log_level=ansible_mitogen.services.LOG.getEffectiveLevel(),
                candidate_temp_dirs=self._get_candidate_temp_dirs(),
            )


def get(self: Any, stack: list[dict[str, Any]]) -> dict[str, Any]:
    """ContextService.get: contexts before the last are passed through; the last is prepared if it is not."""
    via = None
    result: Any = None
    for index, spec in enumerate(stack):
        _passing_through.on = index < len(stack) - 1
        try:
            result = self._wait_or_start(spec, via=via).get()
            if isinstance(result, tuple):  # exc_info()
                ansible_mitogen.services.reraise(*result)
            via = result["context"]
        except mitogen.core.ChannelError:
            return {
                "context": None,
                "init_child_result": None,
                "method_name": spec["method"],
                "msg": self.disconnect_msg,
            }
        except mitogen.core.StreamError as e:
            return {"context": None, "init_child_result": None, "method_name": spec["method"], "msg": str(e)}
        finally:
            _passing_through.on = False
    if result["init_child_result"] is None:
        _prepare(self, result)
    return result


_stock_connect: Any = getattr(_ContextService, "_connect", None)
if (
    all(callable(getattr(_ContextService, name, None)) for name in _NEEDED)
    and hasattr(_ContextService, "disconnect_msg")
    and hasattr(ansible_mitogen.services, "reraise")
):
    _ContextService._connect = _connect
    _ContextService.get = mitogen.service.expose(mitogen.service.AllowParents())(
        mitogen.service.arg_spec({"stack": list})(get)
    )

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):  # type: ignore[misc,valid-type]
    pass
