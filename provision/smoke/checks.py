"""What a provisioned host must look like, as functions that take a testinfra host and list problems.

The tests in this package assert that each list is empty; unit tests run the same functions against a
local host and a fake /etc/apt to show that they do find problems.
"""

import re
from typing import Any

APT_SOURCES_FILE = "provision.sources"


def ssh_service_name(distribution: str) -> str:
    return "ssh" if distribution.lower() in ("debian", "ubuntu") else "sshd"


def sshd_problems(host: Any) -> list[str]:
    name = ssh_service_name(host.system_info.distribution or "")
    problems = []
    if not host.service(name).is_running:
        problems.append(f"{name}.service is not running")
    # Ubuntu 22.10+ starts sshd from ssh.socket; either one enabled survives a reboot.
    if not (_enabled(host, name) or _enabled(host, f"{name}.socket")):
        problems.append(f"neither {name}.service nor {name}.socket is enabled")
    return problems


def _enabled(host: Any, unit: str) -> bool:
    try:
        return bool(host.service(unit).is_enabled)
    except RuntimeError:  # testinfra: the unit does not exist
        return False


def python_problems(host: Any) -> list[str]:
    result = host.run("python3 -c 'import sys; print(sys.version_info[0])'")
    if result.rc != 0:
        return [f"python3 does not run (rc={result.rc}): {result.stderr.strip()[:200]}"]
    if result.stdout.strip() != "3":
        return [f"python3 printed {result.stdout.strip()!r}, expected '3'"]
    return []


def mirror_problems(host: Any, mirror: str, allowed: tuple[str, ...] = (), apt_dir: str = "/etc/apt") -> list[str]:
    """With a mirror: provision.sources uses it and no other enabled source points elsewhere.

    Without one: provision.sources must not exist. `allowed` lists further URLs (a security mirror).
    """
    ours = host.file(f"{apt_dir}/sources.list.d/{APT_SOURCES_FILE}")
    if not mirror:
        return [f"{ours.path} exists although base_apt_mirror is empty"] if ours.exists else []
    if not ours.exists:
        return [f"{ours.path} is missing although base_apt_mirror is {mirror}"]
    problems = []
    if mirror not in ours.content_string:
        problems.append(f"{ours.path} does not mention {mirror}")
    prefixes = tuple(p.rstrip("/") for p in (mirror, *allowed) if p)
    for path in _source_files(host, apt_dir):
        for uri in enabled_uris(path, host.file(path).content_string):
            if not uri.rstrip("/").startswith(prefixes):
                problems.append(f"{path} has an enabled source {uri} that is not the mirror")
    return problems


def _source_files(host: Any, apt_dir: str) -> list[str]:
    files = []
    if host.file(f"{apt_dir}/sources.list").exists:
        files.append(f"{apt_dir}/sources.list")
    directory = host.file(f"{apt_dir}/sources.list.d")
    if directory.is_directory:
        for name in sorted(directory.listdir()):
            if name != APT_SOURCES_FILE and name.endswith((".list", ".sources")):
                files.append(f"{apt_dir}/sources.list.d/{name}")
    return files


def enabled_uris(path: str, text: str) -> list[str]:
    """The repository URIs an apt source file enables: one-line .list format or deb822 .sources."""
    if path.endswith(".sources"):
        return _deb822_uris(text)
    uris = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] not in ("deb", "deb-src"):
            continue
        rest = words[1:]
        if rest and rest[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if rest:
            uris.append(rest[0])
    return uris


def _deb822_uris(text: str) -> list[str]:
    uris = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.lstrip().startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        uris.extend(fields.get("uris", "").split())
    return uris


REBOOT_REQUIRED_FILE = "/run/provision/reboot-required"


def reboot_pending_problems(host: Any, path: str = REBOOT_REQUIRED_FILE) -> list[str]:
    """A role that needed a reboot and was told not to (nvidia_reboot: false) leaves the reason there; /run is
    emptied by the reboot itself."""
    if not host.file(path).exists:
        return []
    reason = " ".join(host.file(path).content_string.split())
    return [f"a reboot is pending ({path}): {reason}"]
