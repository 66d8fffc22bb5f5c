"""Mitogen's linear strategy, reaching root in one step where sudo allows it, not preparing a context that
`become` only passes through, and sharing SSH connections as ansible.cfg asks.

`provision up` selects this plugin (ANSIBLE_STRATEGY=provision_mitogen) when Mitogen is installed. It is
Mitogen's own `mitogen_linear` with three changes in how Mitogen connects. For a task with `become`, Mitogen starts
a Python on the host as the SSH user, then, through it, a second one under sudo; the task runs in the second.
Stock Mitogen prepares both the same way: it pushes Ansible's module_utils to each and has each import Mitogen's
task runner (and with it ansible.module_utils.basic) and fork a parent for later tasks. The first never runs a
task when every task of the run uses become (all of provision's plays do), so that work is wasted: ~2 s of a
lab VM's emulated CPU per run, and on a real host the round trips of that preparation's imports, which a
controller far from its hosts pays at 100-300 ms each. Here a context that is only passed through is connected
and nothing more; it is prepared the first time a task runs in it (a task with `become: false`).

Where the hop to root is sudo without a password (cloud images' default user, `provision bootstrap`'s admin),
the two Pythons are one: SSH runs `sudo -n -u root -- python3` and Mitogen boots in that (the same command
Mitogen's sudo hop runs, from the login shell instead of from a first Python). That saves the login user's
Python, its boot and sudo's pseudo-terminal: ~1.1 s of a lab VM's emulated CPU per host and run, a round trip
or two on a real host. Where sudo says no (a password is required, a tty is required), Mitogen's two steps are
taken for that host for the rest of the run, as stock Mitogen would.

And Mitogen's SSH gets the ControlPath that Ansible's ssh plugin would give it (with_control_path).

Only what Mitogen 0.3.54 (the pinned version) has is patched, and only when all of it is there: with another
Mitogen, or one whose internals moved, this is plain `mitogen_linear`.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import ansible.constants
import ansible.plugins.loader
import ansible_mitogen.loaders
import ansible_mitogen.services
import ansible_mitogen.strategy
import ansible_mitogen.target
import mitogen.core
import mitogen.service
import mitogen.sudo

_ContextService = ansible_mitogen.services.ContextService
# Everything of ContextService's that _connect, _prepare and get below use (its instance attributes aside).
_NEEDED = (
    "_connect",
    "_wait_or_start",
    "_send_module_forwards",
    "_get_candidate_temp_dirs",
    "_update_lru",
    "_on_context_disconnect",
    "_shutdown_unlocked",
    "get",
    "reset",
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


def with_control_path(stack: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`stack` with Ansible's ControlPath given to an SSH hop whose ssh_args ask for ControlPersist but name no path.

    Ansible's ssh plugin adds `-o ControlPath=` (control_path in control_path_dir) itself; Mitogen passes ssh_args
    as they are, so ssh had no socket to share and every run logged in anew (a key exchange and a login on the host:
    ~0.3 s of a lab VM's emulated CPU per host and run). The same socket as the ssh plugin's, so either shares it.
    """
    if not stack or stack[0].get("method") != "ssh":
        return stack
    args = [str(arg) for arg in stack[0]["kwargs"].get("ssh_args") or []]
    lowered = [arg.lower() for arg in args]
    if not any("controlpersist" in arg for arg in lowered) or any("controlpath" in arg for arg in lowered):
        return stack
    login = dict(stack[0], kwargs=dict(stack[0]["kwargs"], ssh_args=[*args, "-o", _control_path()]))
    return [login, *stack[1:]]


@functools.cache
def _control_path() -> str:
    """`ControlPath=` as Ansible's ssh plugin sets it, its directory made: worked out once, not for each task."""
    ansible.plugins.loader.connection_loader.get("ssh", class_only=True)  # its settings' definitions, for the config
    config = ansible.constants.config
    directory = os.path.abspath(os.path.expanduser(
        config.get_config_value("control_path_dir", plugin_type="connection", plugin_name="ssh")
    ))  # fmt: skip
    # The ssh plugin's default (None) is a hash of host, port and user; ssh's %C is one too.
    path = config.get_config_value("control_path", plugin_type="connection", plugin_name="ssh") or "%(directory)s/%%C"
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return f"ControlPath={path % {'directory': directory}}"


def joined(stack: list[dict[str, Any]]) -> dict[str, Any] | None:
    """An SSH login followed by a passwordless sudo, as one SSH hop whose command is sudo's; None for any other
    stack (a password, sudo -i or an SELinux role, an interpreter that is a shell line: Mitogen's own way)."""
    if len(stack) != 2 or stack[0].get("method") != "ssh" or stack[1].get("method") != "sudo":
        return None
    become = dict(stack[1]["kwargs"])
    python = become.pop("python_path", None) or ["python3"]
    python = [python] if isinstance(python, str) else list(python)
    if become.get("password") or "source" in python:
        return None
    try:
        flags = mitogen.sudo.parse_sudo_flags(become.get("sudo_args") or [])
    except mitogen.core.StreamError:  # sudo flags Mitogen does not know: its sudo hop says so
        return None
    if flags.login or flags.role or flags.type:
        return None
    # What Mitogen's sudo hop runs (mitogen/sudo.py Connection.get_boot_command), with -n for its password prompt:
    # never wait for one.
    argv = [become.get("sudo_path") or "sudo", "-n", "-u", become.get("username") or flags.user or "root"]
    argv += ["-E"] if flags.preserve_env else []
    argv += ["-H"] if flags.set_home else []
    return {"method": "ssh", "kwargs": {**stack[0]["kwargs"], "python_path": [*argv, "--", *python]}}


def _refused_by_sudo(result: Any) -> bool:
    """Whether a failed joined connection failed in sudo (sudo's messages start "sudo:"), not in SSH."""
    return isinstance(result, tuple) and "sudo:" in str(result[1])


def _get_joined(self: Any, stack: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The context for `stack` reached in one hop, or None when it cannot be (see joined)."""
    spec = joined(stack)
    if spec is None:
        return None
    login_key = ansible_mitogen.services.key_from_dict(via=None, **stack[0])
    with self._lock:
        refused = self.__dict__.setdefault("_provision_sudo_refused", set())
        by_login = self.__dict__.setdefault("_provision_joined", {})
    if login_key in refused:
        return None
    result = self._wait_or_start(spec).get()
    if _refused_by_sudo(result):
        with self._lock:
            refused.add(login_key)
        return None
    if isinstance(result, tuple):  # exc_info(): SSH's own failure, the same as the two-step way would meet
        ansible_mitogen.services.reraise(*result)
    with self._lock:
        by_login.setdefault(login_key, set()).add(result["context"])
    # Ansible's connection takes `via` as the login user's context (for a path like ~user); the one context is it.
    return dict(result, via=result["context"])


def get(self: Any, stack: list[dict[str, Any]]) -> dict[str, Any]:
    """ContextService.get: [ssh, sudo] in one hop where sudo allows; otherwise contexts before the last are
    passed through and the last is prepared if it is not."""
    stack = with_control_path(stack)
    try:
        one = _get_joined(self, stack)
    except mitogen.core.ChannelError:
        return {"context": None, "init_child_result": None, "method_name": "ssh", "msg": self.disconnect_msg}
    except mitogen.core.StreamError as e:
        return {"context": None, "init_child_result": None, "method_name": "ssh", "msg": str(e)}
    if one is not None:
        return one
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


def reset(self: Any, stack: list[dict[str, Any]]) -> bool:
    """ContextService.reset: resetting a login (reboot, reset_connection) ends the contexts joined through it."""
    stack = with_control_path(stack)
    found = _stock_reset(self, stack)
    if len(stack) != 1:
        return found
    key = ansible_mitogen.services.key_from_dict(via=None, **stack[0])
    with self._lock:
        contexts = self.__dict__.get("_provision_joined", {}).pop(key, set())
    for context in contexts:
        latch = mitogen.core.Latch()
        with self._lock:
            if context not in self._key_by_context:  # already gone (disconnected)
                continue
            mitogen.core.listen(context, "disconnect", latch.put)
            self._shutdown_unlocked(context)
        latch.get(timeout=30.0)
        found = True
    return found


_stock_connect: Any = getattr(_ContextService, "_connect", None)
_stock_reset: Any = getattr(_ContextService, "reset", None)
if (
    all(callable(getattr(_ContextService, name, None)) for name in _NEEDED)
    and hasattr(_ContextService, "disconnect_msg")
    and hasattr(ansible_mitogen.services, "reraise")
    and hasattr(ansible_mitogen.services, "key_from_dict")
    and hasattr(mitogen.sudo, "parse_sudo_flags")
):
    _ContextService._connect = _connect
    _ContextService.get = mitogen.service.expose(mitogen.service.AllowParents())(
        mitogen.service.arg_spec({"stack": list})(get)
    )
    _ContextService.reset = mitogen.service.expose(mitogen.service.AllowParents())(
        mitogen.service.arg_spec({"stack": list})(reset)
    )

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):  # type: ignore[misc,valid-type]
    pass
