#!/usr/bin/python3
"""Pull model weights onto a host and prove every byte against a lockfile, in one pass over the bytes.

Runs on the target with the standard library only.  For each locked file:
  - a verification record beside the files (.provision-weights.json: size, mtime, ctime, inode, digest)
    confirms a converged file from one stat(), with no re-hash, unless `deep` asks for one;
  - a missing or changed file is streamed to <path>.part while sha256 is computed in the same pass (one
    thread receives, a second writes, a third hashes), resumed with HTTP Range when a .part is
    already there (its bytes are hashed again: hash state cannot be saved), and renamed into place only
    after size and digest match, so a reader never sees an unverified file at its final path;
  - a mismatch deletes the bad bytes and tries the next mirror; a file no mirror serves correctly fails
    the host, naming the file, the expected and actual digests and the mirrors tried.
Several files download at once; progress (bytes, rate, ETA) goes to a small JSON file that the role
polls, so the controller shows it while the download runs asynchronously.  The file carries the pull's pid
and, on every way out, "finished": true, so the poll needs nothing from Ansible's async machinery (Mitogen
has none of its files).

One pull at a time per model directory: a pull holds an exclusive lock (flock) per model while it surveys,
downloads and renames.  A second pull of the same model (a `provision up` run again while the first one's
download, which outlives Ctrl-C, still runs) waits for the lock, showing the first one's progress as its
own, then surveys again: what the first one placed is verified and kept, only what is still missing is
pulled.  So two writers never share a .part, and only verified bytes are renamed into place.
"""

# Ansible modules put DOCUMENTATION before the imports (ansible-doc reads it), hence E402.
# ruff: noqa: E402
from __future__ import annotations

DOCUMENTATION = r"""
module: weights_pull
short_description: Download model files verified against a sha256 lockfile, resumable, mirror by mirror
description:
  - See the role's README.md. mode=check reports what a pull would do from the verification records alone
    (fast, read-only); mode=pull downloads; mode=verify reports ok, missing and corrupt files (deep re-hashes).
options:
  models:
    description:
      - Models, each {name, dest, model, revision, files [{path, size, sha256}], mirrors, owner, group, mode,
        dir_mode}.
    type: list
    elements: dict
    default: []
  mode:
    type: str
    choices: [check, pull, verify]
    default: pull
  deep:
    description: Re-hash files even when their verification record matches.
    type: bool
    default: false
  parallel:
    type: int
    default: 4
  retries:
    description: How many times a broken connection is resumed on the same mirror before the next one is tried.
    type: int
    default: 2
  timeout:
    description: Seconds without data before a connection counts as broken.
    type: int
    default: 60
  token:
    description:
      - Bearer token for the mirrors named in token_hosts, sent over HTTPS only (never over plain HTTP,
        never to another host, never to a host a mirror redirects to).
    type: str
  token_hosts:
    description: Host names the token belongs to (a name also covers its subdomains).
    type: list
    elements: str
    default: []
  proxy:
    type: str
  progress_file:
    description:
      - Where a pull writes its progress (bytes, rate, ETA and a summary line) about once a second, with its
        pid, and "finished" true when it ends (however it ends). One file per run.
    type: path
    required: true
  lock_dir:
    description: Where the per-model lock files are (one per model directory, held while a pull runs).
    type: path
    default: /run/provision/locks
"""

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import platform
import queue
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

RECORD = ".provision-weights.json"
CHUNK = 4 << 20
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Mismatch(Exception):
    """The bytes a mirror served are not the locked ones."""


class Broken(Exception):
    """The transfer stopped early (connection lost, timeout, a server error): worth resuming."""


class Refused(Exception):
    """The mirror does not have the file or will not give it (HTTP 4xx): go to the next mirror."""


def human(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def safe_relpath(path):
    """A locked path must stay inside the model directory: relative, no '..', no empty or dot segments."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in path:
        return None
    if parts[-1].endswith(".part") or parts[0] == RECORD:
        return None
    return path


def check_models(models):
    problems = []
    for m in models:
        seen = set()
        for f in m.get("files") or []:
            where = f"model {m.get('name')}: file {f.get('path')!r}"
            if not isinstance(f.get("path"), str) or safe_relpath(f["path"]) is None:
                problems.append(f"{where}: path must be relative, inside the model directory, without '..'")
            elif f["path"] in seen:
                problems.append(f"{where}: listed twice")
            seen.add(f.get("path"))
            if not isinstance(f.get("size"), int) or f["size"] < 0:
                problems.append(f"{where}: size must be a whole number of bytes")
            if not isinstance(f.get("sha256"), str) or not SHA256.match(f["sha256"]):
                problems.append(f"{where}: sha256 must be 64 lowercase hex digits")
        if not os.path.isabs(m.get("dest") or ""):
            problems.append(f"model {m.get('name')}: dest must be an absolute path")
    return problems


def stat_key(st):
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def load_record(dest):
    try:
        with open(os.path.join(dest, RECORD)) as fh:
            data = json.load(fh)
        return data.get("files", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_record(model, files):
    """Atomically replace the record: what was verified, and the stat() that proves it is still that file."""
    dest = model["dest"]
    body = {
        "version": 1,
        "model": model.get("model") or model["name"],
        "revision": model.get("revision") or "",
        "files": dict(sorted(files.items())),
    }
    tmp = os.path.join(dest, RECORD + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(body, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(dest, RECORD))


def hash_file(path, hasher=None, limit=None):
    hasher = hasher or hashlib.sha256()
    remaining = limit
    with open(path, "rb") as fh:
        while remaining is None or remaining > 0:
            block = fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not block:
                break
            hasher.update(block)
            if remaining is not None:
                remaining -= len(block)
    return hasher


def mount_of(path):
    path = os.path.realpath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Progress:
    """Bytes received across all downloads, written to a JSON file about once a second."""

    def __init__(self, path, total, files):
        self.path, self.total, self.files = path, total, files
        self.done = 0
        self.files_done = 0
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = None

    def add(self, n):
        with self.lock:
            self.done += n

    def file_done(self):
        with self.lock:
            self.files_done += 1

    def snapshot(self, finished=False):
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        return {
            "done": self.done, "total": self.total, "rate": rate, "eta": eta, "elapsed": elapsed,
            "files_done": self.files_done, "files": self.files, "finished": finished,
        }  # fmt: skip

    def write(self, finished=False):
        state = self.snapshot(finished)
        write_progress(self.path, {**state, "summary": progress_line(state)})

    def __enter__(self):
        self.write()

        def loop():
            while not self.stop.wait(1.0):
                self.write()

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.write(finished=True)


def write_progress(path, state):
    """Replace the progress file (one JSON line) atomically; the pid tells the poll whether the pull lives."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"finished": False, **state, "pid": os.getpid()}, fh)
        fh.write("\n")
    os.replace(tmp, path)


def read_json(path):
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_models(models, lock_dir, progress_file, poll=1.0):
    """Hold an exclusive lock per model directory until this process exits; wait while another pull has one.

    Locks are taken in a fixed order (sorted by directory), so two pulls of overlapping model sets cannot
    deadlock.  The holder writes its pid and progress file into the lock file; a waiting pull shows that
    progress as its own.  Returns the pids waited for.  Release is the process's exit (the lock files stay).
    """
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    waited = []
    for dest in sorted({m["dest"] for m in models}):
        name = "weights-" + hashlib.sha256(dest.encode()).hexdigest()[:16] + ".lock"
        fd = os.open(os.path.join(lock_dir, name), os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_json(os.path.join(lock_dir, name))
                if holder.get("pid") and holder["pid"] not in waited:
                    waited.append(holder.get("pid"))
                theirs = read_json(holder.get("progress_file") or "").get("summary") or "starting"
                line = f"waiting for the pull of {dest} already running here (pid {holder.get('pid')}): {theirs}"
                write_progress(progress_file, {"summary": line})
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "dest": dest, "progress_file": progress_file}).encode(), 0)
        # The descriptor stays open (and the lock held) until the process exits.
    return waited


class Sink:
    """Writes and hashes received blocks, each in a thread of its own, while the caller receives the next ones.

    Three stages, so receiving, writing and hashing each get a CPU: probes in a lab VM (2 vCPUs, 1 GiB) gave
    receive+write in one thread with hashing beside it 25-27 MiB/s, three stages 29-33, `curl -o` 29-36 in
    the same minutes.  Buffers go round a fixed pool (the hasher hands each back), so memory stays at
    BLOCKS * CHUNK per download however the stages' speeds differ.  A write error (disk full) is raised to the
    receiver at its next block and again by close(); the blocks after it are still hashed, then discarded.
    A buffer the receiver takes and does not put is simply dropped: every such path ends in close().
    """

    BLOCKS = 6

    def __init__(self, fh, hasher):
        self.fh, self.hasher, self.error = fh, hasher, None
        self.free = queue.Queue()
        for _ in range(self.BLOCKS):
            self.free.put(bytearray(CHUNK))
        self.to_write, self.to_hash = queue.Queue(), queue.Queue()
        self.threads = [threading.Thread(target=run, daemon=True) for run in (self._write, self._hash)]
        for thread in self.threads:
            thread.start()

    def block(self):
        """An empty buffer to receive into (waits while every buffer is still being written or hashed)."""
        buf = self.free.get()
        if self.error is not None:
            raise self.error
        return buf

    def put(self, buf, n):
        self.to_write.put((buf, n))

    def _write(self):
        while (item := self.to_write.get()) is not None:
            if self.error is None:
                try:
                    self.fh.write(memoryview(item[0])[: item[1]])
                except OSError as exc:
                    self.error = exc
            self.to_hash.put(item)
        self.to_hash.put(None)

    def _hash(self):
        while (item := self.to_hash.get()) is not None:
            self.hasher.update(memoryview(item[0])[: item[1]])
            self.free.put(item[0])

    def close(self):
        self.to_write.put(None)
        for thread in self.threads:
            thread.join()
        if self.error is not None:
            raise self.error


# OpenSSL picks its sha256 code by CPU flags: SHA-NI, else AVX2, AVX, SSSE3, else plain x86-64.  Emulated and
# some virtual CPUs run the vector code slower than the plain one (a TCG lab VM: 24 MiB/s with AVX2, 58 without
# AVX/SSSE3/AVX2).  libcrypto reads the mask once, when it loads, so it goes into the pull's environment.
SCALAR_SHA256 = {"OPENSSL_ia32cap": "~0x1000020000000000:~0x20"}
RATE_PROBE = (
    "import hashlib, time; b = bytes({size}); h = hashlib.sha256(); h.update(b[:65536]); "
    "t = time.perf_counter(); h.update(b); print({size} / (time.perf_counter() - t))"
)


def sha256_rate(env=None, size=8 << 20):
    """Bytes per second of hashlib's sha256 in a fresh python3 with `env` added (0 when it cannot run)."""
    import subprocess
    import sys

    try:
        out = subprocess.run(
            [sys.executable, "-c", RATE_PROBE.format(size=size)],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return float(out)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0.0


def fastest_sha256_env():
    """The environment for the pull: empty, or the scalar mask when it hashes at least 1.25x faster here."""
    if platform.machine() not in ("x86_64", "AMD64") or "OPENSSL_ia32cap" in os.environ:
        return {}
    as_is, scalar = sha256_rate(), sha256_rate(SCALAR_SHA256)
    return dict(SCALAR_SHA256) if scalar > 1.25 * as_is > 0 else {}


class SocketBody:
    """The rest of a plain-HTTP body with a known length, read straight from the socket a block at a time.

    http.client's readinto() loops over recv() calls of whatever the socket holds (tens of KiB), each after
    a poll() for the timeout.  Here one recv(MSG_WAITALL) fills a whole 4 MiB block and the kernel enforces
    the timeout (SO_RCVTIMEO: no data for that long fails the read, named as such).  Fewer syscalls were
    meant to leave the emulated CPU to the hash; measured with bench/weights_pull.py in a lab VM it changed
    nothing (0.58 of `curl -o`, 0.59 before).  TLS and chunked bodies keep http.client's reader.
    """

    def __init__(self, head, sock, left, timeout):
        self.head, self.sock, self.left, self.timeout = head, sock, left, timeout

    @classmethod
    def of(cls, response, timeout):
        sock = getattr(getattr(response.fp, "raw", None), "_sock", None)
        if response.chunked or not response.length or type(sock) is not socket.socket:
            return None  # an SSLSocket takes no recv flags; a chunked body needs http.client's parser
        left = response.length
        head = response.fp.peek(1)[:left]  # what http.client has already buffered past the headers
        response.fp.read(len(head))
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", timeout, 0))
        return cls(head, sock, left - len(head), timeout)

    def readinto(self, buf):
        if self.head:
            n = len(self.head)
            buf[:n] = self.head
            self.head = b""
            return n
        if not self.left:
            return 0
        try:
            n = self.sock.recv_into(buf, min(len(buf), self.left), socket.MSG_WAITALL)
        except BlockingIOError:  # what SO_RCVTIMEO's expiry looks like on a blocking socket
            raise TimeoutError(f"no data for {self.timeout} s") from None
        self.left -= n
        return n


class Puller:
    def __init__(self, module, progress):
        p = module.params
        self.module, self.progress = module, progress
        self.timeout, self.retries, self.token = p["timeout"], p["retries"], p["token"]
        self.token_hosts = p["token_hosts"]
        handlers = [urllib.request.ProxyHandler({"http": p["proxy"], "https": p["proxy"]})] if p["proxy"] else []
        self.opener = urllib.request.build_opener(*handlers)

    def url(self, template, model, f):
        return template.format(
            model=model.get("model") or model["name"],
            revision=model.get("revision") or "main",
            path=urllib.parse.quote(f["path"]),
        )

    def fetch(self, url, part, f):
        """Fill `part` with the file from `url`, resuming what is there; returns (sha256 hex, resumed-from)."""
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have > f["size"]:
            os.unlink(part)
            have = 0
        hasher = hashlib.sha256()
        if have:
            hash_file(part, hasher)  # sha256 state cannot be saved: re-hash the bytes already on disk
        if have == f["size"]:
            return hasher.hexdigest(), have
        request = urllib.request.Request(url)
        if self.token and token_allowed(url, self.token_hosts):
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = self.opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # our .part is not a prefix the server knows: start over
                os.unlink(part)
                raise Broken(f"HTTP 416 for a resume at byte {have}") from None
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise Refused(f"HTTP {exc.code} {exc.reason}") from None
            raise Broken(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise Broken(str(getattr(exc, "reason", exc))) from None
        with response:
            if have and response.status == 206:
                match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != have:
                    raise Broken(f"server answered the resume at byte {have} with a different range")
                resumed = have
                self.progress.add(have)  # what is already on disk counts towards the total
            else:
                resumed = 0  # the server ignored Range: start over from the first byte
                hasher = hashlib.sha256()
                have = 0
            length = response.headers.get("Content-Length")
            if length is not None and have + int(length) != f["size"]:
                raise Mismatch(f"size {have + int(length)} instead of {f['size']}")
            got = have
            with open(part, "r+b" if resumed else "wb") as fh:
                if resumed:
                    fh.seek(have)
                    fh.truncate()
                sink = Sink(fh, hasher)
                body = SocketBody.of(response, self.timeout) or response
                try:
                    while True:
                        buf = sink.block()
                        try:
                            n = body.readinto(buf)
                        except (OSError, http.client.HTTPException) as exc:
                            raise Broken(f"connection lost after {human(got)}: {exc}") from None
                        if not n:
                            break
                        got += n
                        if got > f["size"]:
                            raise Mismatch(f"more than the locked {f['size']} bytes")
                        sink.put(buf, n)
                        self.progress.add(n)
                finally:
                    sink.close()
                    fh.flush()
                    os.fsync(fh.fileno())
            if got < f["size"]:
                raise Broken(f"connection closed after {human(got)} of {human(f['size'])}")
        return hasher.hexdigest(), resumed

    def pull(self, model, f, existing_bad):
        """Download one file through the mirrors in order; returns (notes, error or None)."""
        final = os.path.join(model["dest"], f["path"])
        part = final + ".part"
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if existing_bad and os.path.exists(final):
            os.unlink(final)  # proven corrupt: a reader must not keep seeing it
        tried = []
        for template in model["mirrors"]:
            url = self.url(template, model, f)
            shown = redact(url)
            attempts, fresh_retry = 0, True
            while True:
                attempts += 1
                try:
                    digest, resumed = self.fetch(url, part, f)
                except OSError as exc:  # on our side (disk full, permissions): no mirror can help
                    return None, f"model {model['name']}: {f['path']}: {exc.strerror or exc} ({exc.filename or part})"
                except Broken as exc:
                    if attempts <= self.retries:
                        time.sleep(min(2 * attempts, 10))
                        continue
                    tried.append(f"{shown}: {exc}")
                    break
                except Refused as exc:
                    tried.append(f"{shown}: {exc}")
                    break
                except Mismatch as exc:
                    _unlink(part)
                    tried.append(f"{shown}: {exc}")
                    break
                if digest == f["sha256"]:
                    self.place(model, part, final)
                    note = f"{f['path']}: from {shown}"
                    if resumed:
                        note += f" (resumed at {human(resumed)})"
                    if tried:
                        note += "; rejected " + "; ".join(tried)
                    return note, None
                _unlink(part)
                if resumed and fresh_retry:  # the bad bytes may be the old prefix: once more from zero
                    fresh_retry = False
                    continue
                tried.append(f"{shown}: sha256 {digest}")
                break
        error = (
            f"model {model['name']}: {f['path']}: no mirror served the locked file (expected sha256 "
            f"{f['sha256']}, {f['size']} bytes); tried " + "; ".join(tried or ["no mirror configured"])
        )
        return None, error

    def place(self, model, part, final):
        os.chmod(part, int(model.get("mode") or "0644", 8))
        uid, gid = ids(model)
        if uid != -1 or gid != -1:
            os.chown(part, uid, gid)
        os.replace(part, final)
        fd = os.open(os.path.dirname(final), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def token_allowed(url, hosts):
    """Whether the token may go with a request for `url`: HTTPS only, to a host it belongs to (or a subdomain)."""
    parts = urllib.parse.urlsplit(url)
    name = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme != "https" or not name:
        return False
    return any(name == h or name.endswith("." + h) for h in (h.strip().rstrip(".").lower() for h in hosts) if h)


def redact(url):
    """A URL as it may be shown: without user:password and without a query string (signed URLs)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def ids(model):
    import grp
    import pwd

    uid = pwd.getpwnam(model["owner"]).pw_uid if model.get("owner") else -1
    gid = grp.getgrnam(model["group"]).gr_gid if model.get("group") else -1
    return uid, gid


def _unlink(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def survey(model, deep, hash_pool):
    """Sort a model's files into ok, missing and corrupt; files whose record does not match are hashed."""
    record = load_record(model["dest"])
    ok, missing, corrupt = [], [], []
    to_hash = []
    for f in model["files"]:
        final = os.path.join(model["dest"], f["path"])
        try:
            st = os.stat(final)
        except FileNotFoundError:
            missing.append(f)
            continue
        entry = record.get(f["path"]) or {}
        recorded = entry.get("sha256") == f["sha256"] and {k: entry.get(k) for k in stat_key(st)} == stat_key(st)
        if st.st_size != f["size"]:
            corrupt.append((f, f"size {st.st_size} instead of {f['size']}"))
        elif recorded and not deep:
            ok.append((f, entry))
        else:
            to_hash.append((f, final, st))
    digests = hash_pool.map(lambda job: hash_file(job[1]).hexdigest(), to_hash)
    for (f, _final, st), digest in zip(to_hash, digests, strict=True):
        if digest == f["sha256"]:
            ok.append((f, {**stat_key(st), "sha256": digest}))
        else:
            corrupt.append((f, f"sha256 {digest}"))
    return ok, missing, corrupt


def main():
    module = AnsibleModule(
        argument_spec=dict(
            models=dict(type="list", elements="dict", default=[]),
            mode=dict(type="str", choices=["check", "pull", "verify"], default="pull"),
            deep=dict(type="bool", default=False),
            parallel=dict(type="int", default=4),
            retries=dict(type="int", default=2),
            timeout=dict(type="int", default=60),
            token=dict(type="str", no_log=True),
            token_hosts=dict(type="list", elements="str", default=[]),
            proxy=dict(type="str"),
            progress_file=dict(type="path", required=True),
            lock_dir=dict(type="path", default="/run/provision/locks"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["mode"] != "pull" or module.check_mode:
        run(module)
        return
    # A pull: its progress file says it lives from the first moment, and "finished" on every way out
    # (exit_json and fail_json raise SystemExit, which passes through here).
    write_progress(p["progress_file"], {"summary": "starting"})
    try:
        run(module)
    finally:
        state = read_json(p["progress_file"])
        write_progress(p["progress_file"], {**state, "finished": True})


def run(module):
    p = module.params
    started = time.monotonic()
    problems = check_models(p["models"])
    if problems:
        module.fail_json(msg="; ".join(problems))
    waited = []
    if p["mode"] == "pull" and not module.check_mode:
        waited = lock_models(p["models"], p["lock_dir"], p["progress_file"])

    report = {}
    to_pull = []  # (model, file, proven corrupt at its final path)
    verified = {}  # model name -> {path: record entry} of the files proven good
    with ThreadPoolExecutor(max_workers=max(1, p["parallel"])) as pool:
        for m in p["models"]:
            ok, missing, corrupt = survey(m, p["deep"], pool) if os.path.isdir(m["dest"]) else ([], m["files"], [])
            report[m["name"]] = {
                "ok": sorted(f["path"] for f, _ in ok),
                "missing": sorted(f["path"] for f in missing),
                "corrupt": sorted(f"{f['path']} ({why})" for f, why in corrupt),
            }
            verified[m["name"]] = {f["path"]: entry for f, entry in ok}
            to_pull += [(m, f, False) for f in missing] + [(m, f, True) for f, _ in corrupt]

    if p["mode"] == "verify":
        bad = [
            f"{name}: " + ", ".join([f"missing {x}" for x in r["missing"]] + [f"corrupt {x}" for x in r["corrupt"]])
            for name, r in report.items()
            if r["missing"] or r["corrupt"]
        ]
        if bad:
            module.fail_json(msg="; ".join(bad), report=report)
        how = "re-hashed" if p["deep"] else "confirmed from the records"
        module.exit_json(changed=False, report=report, summary=f"{count(report)}, {how} ({elapsed(started)})")

    stale = [m for m in p["models"] if load_record(m["dest"]) != verified[m["name"]]]
    if p["mode"] == "check" or module.check_mode:
        need = sum(f["size"] for _, f, _ in to_pull)
        todo = [f"{m['name']}/{f['path']}" for m, f, _ in to_pull]
        summary = f"{count(report)} ({elapsed(started)})"
        if todo:
            summary += f"; to pull: {len(todo)} files, {human(need)}"
        needed = bool(todo or stale)  # `changed` may be overridden by the task; this may not
        # Measured here, before the pull, because the pull's libcrypto must load with the choice.
        hash_env = fastest_sha256_env() if todo and not module.check_mode else {}
        module.exit_json(
            changed=needed, needed=needed, todo=todo, bytes=need, report=report, summary=summary, hash_env=hash_env
        )

    # Space first: fail before a byte is downloaded when a disk cannot hold what is missing.
    need_by_mount = {}
    for m, f, _ in to_pull:
        part = os.path.join(m["dest"], f["path"]) + ".part"
        have = os.path.getsize(part) if os.path.isfile(part) and os.path.getsize(part) <= f["size"] else 0
        mount = mount_of(m["dest"])
        need_by_mount[mount] = need_by_mount.get(mount, 0) + f["size"] - have
    for mount, need in need_by_mount.items():
        have = free_bytes(mount)
        if need > have:
            module.fail_json(msg=f"not enough space on {mount}: need {human(need)}, have {human(have)}", report=report)

    notes, errors = [], []
    if to_pull:
        for m in {id(m): m for m, _, _ in to_pull}.values():
            make_dirs(m)
        total = sum(f["size"] for _, f, _ in to_pull)
        with Progress(p["progress_file"], total, len(to_pull)) as progress:
            puller = Puller(module, progress)

            def one(job):
                m, f, bad = job
                note, error = puller.pull(m, f, bad)
                progress.file_done()
                return m, f, note, error

            with ThreadPoolExecutor(max_workers=max(1, p["parallel"])) as pool:
                for m, f, note, error in pool.map(one, to_pull):
                    if error:
                        errors.append(error)
                        continue
                    notes.append(f"{m['name']}/{note}")
                    st = os.stat(os.path.join(m["dest"], f["path"]))
                    verified[m["name"]][f["path"]] = {**stat_key(st), "sha256": f["sha256"]}
    for m in p["models"]:
        if os.path.isdir(m["dest"]) and load_record(m["dest"]) != verified[m["name"]]:
            write_record(m, verified[m["name"]])
    if errors:
        module.fail_json(msg="; ".join(errors), pulled=notes, changed=bool(notes))
    if not to_pull:
        summary = f"{count(report)} ({elapsed(started)})"
        if waited:  # what this run found missing, the pull it waited for has placed (and verified)
            summary += f"; placed by the pull that was already running (pid {', '.join(map(str, waited))})"
        module.exit_json(changed=bool(stale or waited), report=report, summary=summary)
    pulled = sum(f["size"] for _, f, _ in to_pull)
    seconds = max(time.monotonic() - started, 1e-6)
    module.exit_json(
        changed=True,
        pulled=notes,
        report=report,
        summary=f"pulled {len(to_pull)} files, {human(pulled)} in {seconds:.1f}s ({human(pulled / seconds)}/s)\n"
        + "\n".join(notes),
    )


def count(report):
    parts = []
    for name, r in report.items():
        text = f"{name}: {len(r['ok'])} of {len(r['ok']) + len(r['missing']) + len(r['corrupt'])} files verified"
        if r["missing"]:
            text += f", {len(r['missing'])} missing"
        if r["corrupt"]:
            text += f", {len(r['corrupt'])} corrupt"
        parts.append(text)
    return "; ".join(parts) or "no models"


def elapsed(started):
    return f"{time.monotonic() - started:.2f}s"


def make_dirs(model):
    dest = model["dest"]
    if not os.path.isdir(dest):
        os.makedirs(dest, mode=int(model.get("dir_mode") or "0755", 8))
        uid, gid = ids(model)
        if uid != -1 or gid != -1:
            os.chown(dest, uid, gid)
    for f in model["files"]:
        sub = os.path.dirname(os.path.join(dest, f["path"]))
        if not os.path.isdir(sub):
            os.makedirs(sub, mode=int(model.get("dir_mode") or "0755", 8))


def progress_line(state):
    done, total = state.get("done", 0), state.get("total", 0)
    if not total:
        return "starting"
    text = f"{human(done)} of {human(total)} ({100 * done / total:.0f}%)"
    text += f", {state.get('files_done', 0)}/{state.get('files', 0)} files"
    if state.get("rate"):
        text += f", {human(state['rate'])}/s"
    if state.get("eta") is not None and not state.get("finished"):
        text += f", ETA {int(state['eta'])}s"
    return text


if __name__ == "__main__":
    main()
