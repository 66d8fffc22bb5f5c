"""A file server for the lab: what a model mirror looks like to the weights role, with faults on demand.

It serves one directory under any number of mirror prefixes (/<mirror>/<path>), honours HTTP Range
(206 + Content-Range; sendfile for speed), logs every request, and can misbehave per mirror and path:
drop the connection part way or stall it, serve corrupted bytes of the right size, or ignore Range.  It also answers
the Hugging Face API call that `provision weights lock --endpoint` uses (the shape of the real one), so
locking from an endpoint is tested without the internet.  Bound to 127.0.0.1; a lab VM reaches it as
10.0.2.2.  Used by the integration tests and by bench/.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from provision.weights.lockfile import sha256_file


@dataclass
class Fault:
    drop_after: int | None = None  # close the connection after this many body bytes
    corrupt: bool = False  # flip one byte in the middle (same size, wrong digest)
    ignore_range: bool = False  # answer 200 with the whole file to a Range request
    stall_after: int | None = None  # stop sending after this many body bytes, keeping the connection open
    stall_seconds: float = 5.0  # ... for this long, then close it
    # With stall_after: instead, hold the connection open until this is set (at most stall_seconds), then send
    # the rest: a transfer that stays in flight exactly as long as a test needs it to.
    hold: threading.Event | None = None
    times: int | None = None  # how many requests misbehave (None: all)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    status: int
    authorization: str | None = None


@dataclass
class FileServer:
    root: Path
    port: int = 0
    faults: dict[tuple[str, str], Fault] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    lfs_threshold: int = 10 << 20  # files at least this big are "LFS" files in the API answer

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def fault(self, mirror: str, path: str, fault: Fault) -> None:
        with self._lock:
            self.faults[(mirror, path)] = fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.log.clear()

    def requests(self, path_suffix: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.path.endswith(path_suffix)]

    def take_fault(self, mirror: str, path: str) -> Fault | None:
        with self._lock:
            fault = self.faults.get((mirror, path))
            if fault is None or fault.times == 0:
                return None
            if fault.times is not None:
                fault.times -= 1
            return fault

    def record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)

    def start(self) -> FileServer:
        server = self

        class Handler(_Handler):
            files = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    files: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        api = re.fullmatch(r"(?:/[^/]+)?/api/models/(.+)/revision/([^/]+)", path)
        if api:
            return self._api(api.group(1), api.group(2))
        mirror, _, rel = path.lstrip("/").partition("/")
        resolve = re.fullmatch(r"(.+?)/resolve/[^/]+/(.+)", rel)
        if resolve:  # /<mirror>/<repo>/resolve/<revision>/<path>, the Hugging Face layout
            rel = resolve.group(2)
        target = (self.files.root / rel).resolve()
        if not rel or self.files.root.resolve() not in target.parents or not target.is_file():
            return self._status(404, path)
        fault = self.files.take_fault(mirror, rel) or Fault()
        size = target.stat().st_size
        start, end = 0, size - 1
        status = 200
        wanted = self.headers.get("Range")
        if wanted and not fault.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if not m or int(m.group(1)) >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return self.files.record(Request("GET", path, wanted, 416))
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self.files.record(Request(self.command, path, wanted, status, self.headers.get("Authorization")))
        if not body:
            return None
        count = end - start + 1
        cut = fault.drop_after if fault.drop_after is not None else fault.stall_after
        if cut is not None:
            count = min(count, max(0, cut - start))
        with open(target, "rb") as fh:
            if fault.corrupt:
                data = bytearray(fh.read())[start : start + count]
                middle = size // 2 - start
                if 0 <= middle < len(data):
                    data[middle] ^= 0xFF
                self.wfile.write(data)
            else:
                self.wfile.flush()
                self.connection.sendfile(fh, offset=start, count=count)
        if count < end - start + 1 and fault.hold is not None:
            fault.hold.wait(fault.stall_seconds)
            with open(target, "rb") as fh:
                self.connection.sendfile(fh, offset=start + count, count=end - start + 1 - count)
        elif count < end - start + 1:
            if fault.stall_after is not None:
                time.sleep(fault.stall_seconds)
            self.close_connection = True
            self.connection.shutdown(2)
        return None

    def _status(self, code: int, path: str) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.files.record(Request(self.command, path, None, code))

    def _api(self, repo: str, revision: str) -> None:
        """The Hugging Face model-info answer for the files under root (lfs.sha256 for the big ones)."""
        siblings = []
        for file in sorted(p for p in self.files.root.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in file.relative_to(self.files.root).parts):
                continue
            entry: dict[str, object] = {"rfilename": file.relative_to(self.files.root).as_posix()}
            size = file.stat().st_size
            entry["size"] = size
            if size >= self.files.lfs_threshold:
                entry["lfs"] = {"sha256": sha256_file(file), "size": size}
            siblings.append(entry)
        sha = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        body = json.dumps({"id": repo, "sha": sha, "siblings": siblings}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.files.record(Request("GET", self.path, None, 200))


def make_file(path: Path, size: int, seed: int = 0) -> None:
    """A file of `size` pseudo-random bytes (incompressible, fast to make, same bytes for the same seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = random.Random(seed).randbytes(1 << 20)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)
        fh.flush()
        os.fsync(fh.fileno())
