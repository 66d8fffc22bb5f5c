"""The weights lockfile, read and checked; and the weights_plan filter built on it.

A lockfile says which bytes a model is, file by file (path, size, sha256), at a pinned revision. Format (YAML,
version 1):

    version: 1
    model: Qwen/Qwen2.5-0.5B-Instruct      # the name mirrors know it by ({model} in a mirror URL)
    revision: 7ae557604adf67be50417f59c2c2f167def9a775   # pinned commit ({revision})
    source: https://hf-mirror.com            # where the lock was made (information only)
    files:
      - path: model.safetensors              # relative, inside the model directory
        size: 988097824
        sha256: fdf756fa7fcbe7404d5c60e26bff1a0c8b8aa1f72ced49e7dd0210fe288fb7fe
        origin: lfs-metadata                 # how the digest was learnt: hashed | downloaded | lfs-metadata

`origin` says whether the digest comes from bytes that were hashed (a local directory, or a download at lock
time) or from the endpoint's LFS metadata, which the endpoint asserts but nobody here checked.

weights_plan (the weights_models setting plus each model's lockfile, as the weights_pull module takes them) runs
on the controller, so a broken lockfile stops the run before any host is touched, with the file and key named.

This file needs only Python, PyYAML and (for the filter) ansible-core: the playbooks run without the provision
package. provision's `weights` commands load this same file (provision.weights.lockfile) rather than a copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

VERSION = 1
SHA256 = re.compile(r"^[0-9a-f]{64}$")
ORIGINS = ("hashed", "downloaded", "lfs-metadata")
# What a mirror URL may contain; the weights role fills these in on the host.
URL_FIELDS = ("model", "revision", "path")


class LockError(ValueError):
    """A lockfile, or the settings around one, that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class LockedFile:
    path: str
    size: int
    sha256: str
    origin: str = "hashed"


@dataclass(frozen=True)
class Lock:
    model: str
    revision: str
    files: tuple[LockedFile, ...]
    source: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "model": self.model,
            "revision": self.revision,
            "source": self.source,
            "files": [asdict(f) for f in self.files],
        }


def bad_path(path: object) -> bool:
    """A locked path must stay inside the model directory."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\x00" in path or "\\" in path:
        return True
    parts = path.split("/")
    return any(p in ("", ".", "..") for p in parts) or parts[-1].endswith(".part") or parts[0].startswith(".provision")


def parse(data: object, where: str) -> Lock:
    """Check a loaded lockfile; every problem names the file and the key."""
    if not isinstance(data, dict):
        raise LockError(f"{where}: not a weights lockfile (expected a mapping with version, model, files)")
    if data.get("version") != VERSION:
        raise LockError(f"{where}: version: expected {VERSION}, found {data.get('version')!r}")
    for key in ("model", "revision"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise LockError(f"{where}: {key}: missing or not a string")
    files = data.get("files")
    if not isinstance(files, list) or not files:
        raise LockError(f"{where}: files: expected a non-empty list")
    seen: set[str] = set()
    out = []
    for index, entry in enumerate(files):
        at = f"{where}: files[{index}]"
        if not isinstance(entry, dict):
            raise LockError(f"{at}: expected a mapping with path, size, sha256")
        path, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        if bad_path(path):
            raise LockError(f"{at}.path: {path!r} must be relative and stay inside the model directory")
        assert isinstance(path, str)
        if path in seen:
            raise LockError(f"{at}.path: {path!r} is listed twice")
        seen.add(path)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise LockError(f"{at}.size: expected a whole number of bytes, found {size!r}")
        if not isinstance(digest, str) or not SHA256.match(digest):
            raise LockError(f"{at}.sha256: expected 64 lowercase hex digits")
        origin = entry.get("origin", "hashed")
        if origin not in ORIGINS:
            raise LockError(f"{at}.origin: expected one of {', '.join(ORIGINS)}, found {origin!r}")
        out.append(LockedFile(path, size, digest, origin))
    return Lock(str(data["model"]), str(data["revision"]), tuple(out), str(data.get("source") or ""))


def load(path: Path) -> Lock:
    try:
        text = path.read_text()
    except OSError as exc:
        raise LockError(f"{path}: cannot read the weights lockfile: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise LockError(f"{at}: {getattr(exc, 'problem', None) or exc}") from None
    return parse(data, str(path))


def plan(models: Iterable[dict], base_dir: str, root: str, mirrors: list[str]) -> list[dict]:
    """What the weights module gets for each configured model: its locked files, mirrors and target."""
    out = []
    for index, model in enumerate(models):
        where = f"weights_models[{index}]"
        name = model.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise LockError(f"{where}.name: {name!r} must be a plain directory name")
        lockfile = Path(str(model.get("lockfile") or ""))
        if not model.get("lockfile"):
            raise LockError(f"{where}.lockfile: missing")
        if not lockfile.is_absolute():
            lockfile = Path(base_dir) / lockfile
        lock = load(lockfile)
        chosen = model.get("mirrors") or mirrors
        for template in chosen:
            try:
                template.format(**dict.fromkeys(URL_FIELDS, "x"))
            except (KeyError, IndexError, ValueError) as exc:
                raise LockError(
                    f"{where}.mirrors: {template!r}: only {{model}}, {{revision}}, {{path}} allowed ({exc})"
                ) from None
            if "{path}" not in template:
                raise LockError(f"{where}.mirrors: {template!r} has no {{path}}")
        out.append({
            "name": name,
            "dest": str(model.get("dest") or f"{root.rstrip('/')}/{name}"),
            "model": lock.model,
            "revision": lock.revision,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in lock.files],
            "mirrors": list(chosen),
            **{k: model[k] for k in ("owner", "group", "mode", "dir_mode") if model.get(k) is not None},
        })  # fmt: skip
    return out


def weights_plan(models: list[dict[str, Any]], base_dir: str, root: str, mirrors: list[str]) -> list[dict[str, Any]]:
    from ansible.errors import AnsibleFilterError  # only Ansible runs the filter; provision reads the rest

    try:
        return plan(models, base_dir, root, mirrors)
    except LockError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"weights_plan": weights_plan}
