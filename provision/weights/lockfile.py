"""The weights lockfile: made here (`provision weights lock`, from a directory or an endpoint), read by the roles.

What a lockfile is, how it is checked (parse, load) and what the weights role makes of it (plan) live in the
Ansible project, in playbooks/roles/weights/filter_plugins/weights.py, so that the playbooks run without this
package (AWX, ansible-runner); this module loads that file and turns its errors into provision's usage errors.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from provision import paths
from provision.errors import ProvisionError, UsageError

_lock = paths.playbook_module("roles/weights/filter_plugins/weights.py")
VERSION: int = _lock.VERSION
SHA256 = _lock.SHA256
ORIGINS: tuple[str, ...] = _lock.ORIGINS
URL_FIELDS: tuple[str, ...] = _lock.URL_FIELDS
if TYPE_CHECKING:  # the file is loaded by path, so mypy cannot follow its classes
    Lock = Any
    LockedFile = Any
else:
    Lock = _lock.Lock
    LockedFile = _lock.LockedFile
bad_path = _lock.bad_path


class LockError(UsageError):
    """A lockfile, or the settings around one, that cannot be used."""


def parse(data: object, where: str) -> Lock:
    """Check a loaded lockfile; every problem names the file and the key."""
    try:
        return _lock.parse(data, where)
    except _lock.LockError as exc:
        raise LockError(str(exc)) from None


def load(path: Path) -> Lock:
    try:
        return _lock.load(path)
    except _lock.LockError as exc:
        raise LockError(str(exc)) from None


def plan(models: Iterable[dict], base_dir: str, root: str, mirrors: list[str]) -> list[dict]:
    """What the weights module gets for each configured model: its locked files, mirrors and target."""
    try:
        return list(_lock.plan(models, base_dir, root, mirrors))
    except _lock.LockError as exc:
        raise LockError(str(exc)) from None


def dump(lock: Lock) -> str:
    header = (
        "# Weights lockfile made by `provision weights lock`: the exact bytes of this model, file by file.\n"
        "# origin: hashed/downloaded = hashed by provision; lfs-metadata = as the endpoint states it.\n"
    )
    return header + yaml.safe_dump(lock.to_dict(), sort_keys=False)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def from_directory(directory: Path, model: str, revision: str, workers: int = 4) -> Lock:
    """Hash every file under a local model directory (in parallel: hashlib releases the GIL)."""
    if not directory.is_dir():
        raise LockError(f"{directory}: not a directory")
    paths = sorted(
        p for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )  # fmt: skip
    if not paths:
        raise LockError(f"{directory}: no files to lock")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(sha256_file, paths))
    files = tuple(
        LockedFile(p.relative_to(directory).as_posix(), p.stat().st_size, d, "hashed")
        for p, d in zip(paths, digests, strict=True)
    )
    return Lock(model, revision, files, source=str(directory))


def from_endpoint(
    endpoint: str,
    model: str,
    revision: str = "main",
    token: str | None = None,
    note: Callable[[str], None] = lambda _: None,
) -> Lock:
    """Lock a model from a Hugging Face-compatible endpoint, pinning the revision to its commit.

    LFS files (the weights) carry their sha256 in the endpoint's metadata: they are locked with it and
    marked origin lfs-metadata, and `note` says so.  Other files (configs, tokenizers) carry only a git
    blob id, so they are downloaded and hashed here (origin downloaded).
    """
    base = endpoint.rstrip("/")
    api = f"{base}/api/models/{model}/revision/{urllib.parse.quote(revision, safe='')}?blobs=true"
    not_hf = LockError(
        f"{redact(api)}: not a Hugging Face-compatible answer (JSON with sha and siblings); check --endpoint"
    )
    try:
        info = json.loads(_get(api, token))
    except ValueError:
        raise not_hf from None
    if not isinstance(info, dict) or not all(isinstance(s, dict) for s in info.get("siblings") or []):
        raise not_hf
    commit = info.get("sha")
    if not isinstance(commit, str) or not commit:
        raise LockError(f"{redact(api)}: the answer names no commit (sha)")
    files = []
    trusted = []
    for sibling in info.get("siblings") or []:
        path, size, lfs = sibling.get("rfilename"), sibling.get("size"), sibling.get("lfs")
        if bad_path(path):
            raise LockError(f"{redact(api)}: refusing file name {path!r}")
        if isinstance(lfs, dict) and isinstance(lfs.get("sha256"), str) and SHA256.match(lfs["sha256"]):
            if not isinstance(lfs.get("size", size), int):
                raise not_hf
            files.append(LockedFile(path, int(lfs.get("size", size)), lfs["sha256"], "lfs-metadata"))
            trusted.append(path)
            continue
        url = f"{base}/{model}/resolve/{commit}/{urllib.parse.quote(path)}"
        body = _get(url, token)
        if isinstance(size, int) and size != len(body):
            raise LockError(f"{redact(url)}: {len(body)} bytes, the endpoint's metadata says {size}")
        files.append(LockedFile(path, len(body), hashlib.sha256(body).hexdigest(), "downloaded"))
    if not files:
        raise LockError(f"{redact(api)}: the model has no files")
    if trusted:
        note(
            f"{len(trusted)} of {len(files)} files are locked with the sha256 from {redact(base)}'s LFS metadata, "
            "not hashed here (origin: lfs-metadata); the weights role verifies every byte against it on pull"
        )
    return Lock(model, commit, tuple(sorted(files, key=lambda f: f.path)), source=redact(base))


def _get(url: str, token: str | None) -> bytes:
    request = urllib.request.Request(url)
    if token:
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        raise LockError(f"{redact(url)}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProvisionError(f"{redact(url)}: {getattr(exc, 'reason', exc)}") from None
    except http.client.HTTPException as exc:  # the other end does not speak HTTP
        raise ProvisionError(
            f"{redact(url)}: no HTTP answer ({type(exc).__name__}: {str(exc).strip()[:80]!r})"
        ) from None


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
