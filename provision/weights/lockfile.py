"""The weights lockfile: which bytes a model is, file by file (path, size, sha256), at a pinned revision.

Format (YAML, version 1):

    version: 1
    model: Qwen/Qwen2.5-0.5B-Instruct      # the name mirrors know it by ({model} in a mirror URL)
    revision: 7ae557604adf67be50417f59c2c2f167def9a775   # pinned commit ({revision})
    source: https://hf-mirror.com            # where the lock was made (information only)
    files:
      - path: model.safetensors              # relative, inside the model directory
        size: 988097824
        sha256: fdf756fa7fcbe7404d5c60e26bff1a0c8b8aa1f72ced49e7dd0210fe288fb7fe
        origin: lfs-metadata                 # how the digest was learnt: hashed | downloaded | lfs-metadata

`origin` says whether the digest comes from bytes this tool hashed (a local directory, or a download at
lock time) or from the endpoint's LFS metadata, which the endpoint asserts but this tool did not check.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from provision.errors import ProvisionError, UsageError

VERSION = 1
SHA256 = re.compile(r"^[0-9a-f]{64}$")
ORIGINS = ("hashed", "downloaded", "lfs-metadata")
# What a mirror URL may contain; the weights role fills these in on the host.
URL_FIELDS = ("model", "revision", "path")


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


class LockError(UsageError):
    """A lockfile, or the settings around one, that cannot be used."""


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
