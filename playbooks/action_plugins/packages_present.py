"""packages_present: ansible.builtin.package for state=present, without the package manager when nothing is missing.

Takes ansible.builtin.package's arguments (and so those of the module it picks: apt's update_cache,
cache_valid_time, install_recommends, ...). First it asks the host's package database, in one shell command,
whether every named package is installed (at the pinned version, for `name=version` on apt); if so, and the
task asks for no package-list refresh that is due, the task is ok and unchanged without running the module.
Otherwise it is exactly ansible.builtin.package.

Why: the apt module opens python-apt's cache for every task, even when every package is there: 4-7 s per task
on a small VM (measured on a lab VM under emulation; a converged site run spent a sixth of its time there),
while dpkg-query answers in a tenth of a second. A converged run, the one users run most, pays that for
every package task on every host.

Anything the query cannot judge goes to the module: a state other than present, a name with a wildcard, a
version relation, a file or URL, a virtual package (not in the database by that name), a package manager other
than apt or dnf/yum, or a host whose facts do not name one.
"""

from __future__ import annotations

import shlex
from typing import Any

from ansible.plugins.action.package import ActionModule as PackageAction

# What each package manager's database is asked, answered as "installed NAME VERSION" lines (the nvidia role's
# nvidia_probe asks the same on the host); `names` are shell-quoted, already checked to be plain names.
# dpkg's Status-Status is "installed" whatever the selection, so held packages (the nvidia role holds its own)
# count as installed, as they do for apt.
_DPKG = "dpkg-query -W -f='${db:Status-Status} ${Package} ${Version}\\n' -- %s"
_RPM = "rpm -q --qf 'installed %%{NAME} %%{VERSION}-%%{RELEASE}\\n' -- %s"
# When apt last refreshed its lists (the apt module's own test for cache_valid_time), in epoch seconds.
_APT_LISTS_AGE = (
    "stat -c %Y /var/lib/apt/periodic/update-success-stamp 2>/dev/null || stat -c %Y /var/lib/apt/lists; date +%s"
)
_RPM_MANAGERS = frozenset(("dnf", "dnf5", "yum"))
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-_:~")


def _wanted(names: list[str], manager: str) -> dict[str, str] | None:
    """{package: pinned version or ""}, or None when a name is not one the database can answer for."""
    wanted = {}
    for name in names:
        package, _, version = name.partition("=") if manager == "apt" else (name, "", "")
        if not package or not set(package) <= _PLAIN or not set(version) <= _PLAIN:
            return None
        # dpkg-query prints the name without an architecture qualifier.
        wanted[package.split(":", 1)[0] if manager == "apt" else package] = version
    return wanted


def _installed(stdout: str) -> dict[str, str]:
    """{name: version} of the installed packages in the query's answer (rpm's "package X is not installed" and
    dpkg's other states are left out)."""
    found = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "installed":
            found[fields[1]] = fields[2]
    return found


class ActionModule(PackageAction):
    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        if self._all_present(task_vars):
            result = super(PackageAction, self).run(tmp, task_vars)  # ActionBase's: the common result keys
            result.update(changed=False, msg="every package is installed; the package manager was not run")
            return result
        return super().run(tmp, task_vars)

    def _manager(self, task_vars: dict[str, Any]) -> str:
        use = self._task.args.get("use", "auto")
        if use != "auto":
            return str(use)
        if self._task.delegate_to:
            return ""
        return str(task_vars.get("ansible_package_use") or task_vars.get("ansible_facts", {}).get("pkg_mgr", ""))

    def _all_present(self, task_vars: dict[str, Any]) -> bool:
        args = self._task.args
        manager = self._manager(task_vars)
        if manager != "apt" and manager not in _RPM_MANAGERS:
            return False
        if args.get("state", "present") not in ("present", "installed") or self._task.async_val:
            return False
        names = args.get("name") or args.get("pkg") or []
        names = [names] if isinstance(names, str) else list(names)
        if not names or not all(isinstance(n, str) for n in names):
            return False
        apt = manager == "apt"
        wanted = _wanted(names, "apt" if apt else "rpm")
        if wanted is None:
            return False
        if apt and not self._apt_lists_fresh(args):
            return False
        query = (_DPKG if apt else _RPM) % " ".join(shlex.quote(n) for n in wanted)
        answer = self._low_level_execute_command(query)
        found = _installed(answer.get("stdout", ""))
        return all(p in found and (not v or found[p] == v) for p, v in wanted.items())

    def _apt_lists_fresh(self, args: dict[str, Any]) -> bool:
        """False when the task asks apt to refresh its lists and they are due (as apt itself decides, by the host's
        clock)."""
        if not args.get("update_cache") or str(args.get("update_cache")).lower() in ("false", "no", "0"):
            return True
        valid = int(args.get("cache_valid_time") or 0)
        if valid <= 0:
            return False
        answer = self._low_level_execute_command(_APT_LISTS_AGE)
        try:
            updated, now = (int(n) for n in answer.get("stdout", "").split())
        except ValueError:
            return False
        return now - updated < valid
