"""A standard-library client for OpenAI-compatible servers, run on the host under test (`python3 - ARGS`).

Hosts have python3 but not always curl; `provision test`, the integration tests and the benchmark pipe this
file to the host's python3 and read one JSON object from its output:

    stream URL [--tokens N]             time to first token, events and the gaps between them, total time
    ttft URL [--repeat N] [--tokens N]  median/min/max time to first token over N streamed completions, and how
                                        many of them ended with [DONE] and status 200
    complete URL [--tokens N]           one non-streamed completion: status, the replica that answered
    websocket URL [--message TEXT]      websocket handshake status and the echoed message
    load URL --seconds S --requests N --concurrency C [--fresh]   non-streamed completions: rps, p50, p95, p99,
                                        errors (--fresh: a new connection per request, so an idle keep-alive
                                        connection a server closes, as nginx does on reload, is never one)
    status URL                          the status of a GET of URL (a relay's route)

URL is the server's base (http://127.0.0.1:80); an optional user:password@ in it becomes basic auth.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import socket
import ssl
import statistics
import sys
import threading
import time
import urllib.parse
from typing import Any


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, dict[str, str], str]:
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if parts.username:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    host = parts.hostname or "127.0.0.1"
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a self-signed gateway certificate; the test is about transport
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, parts.port or 443, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    return conn, headers, parts.path.rstrip("/")


def _body(tokens: int, stream: bool) -> bytes:
    messages = [{"role": "user", "content": "Say something."}]
    return json.dumps({"model": "demo", "messages": messages, "max_tokens": tokens, "stream": stream}).encode()


def stream(url: str, tokens: int = 16, timeout: float = 120) -> dict[str, Any]:
    """One streamed chat completion, timed event by event."""
    conn, headers, prefix = _connect(url, timeout)
    start = time.monotonic()
    conn.request("POST", prefix + "/v1/chat/completions", body=_body(tokens, True), headers=headers)
    response = conn.getresponse()
    first_token = None
    arrivals: list[float] = []
    text, done = [], False
    while True:
        line = response.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        now = time.monotonic() - start
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        arrivals.append(now)
        choices = json.loads(data).get("choices") or [{}]
        content = choices[0].get("delta", {}).get("content")
        if content:
            text.append(content)
            if first_token is None:
                first_token = now
    total = time.monotonic() - start
    conn.close()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return {
        "status": response.status,
        "content_type": response.getheader("Content-Type", ""),
        "ttft": first_token,
        "total": total,
        "events": len(arrivals),
        # Events that arrived noticeably apart: 1 means the whole reply came at once (buffered).
        "separate_arrivals": 1 + sum(1 for gap in gaps if gap > 0.005),
        "done": done,
        "text": "".join(text),
    }


def ttft(url: str, repeat: int = 20, tokens: int = 8) -> dict[str, Any]:
    runs = [stream(url, tokens) for _ in range(repeat)]
    firsts = [r["ttft"] for r in runs if r["ttft"] is not None]
    return {
        "runs": len(runs),
        "ok": len(firsts),
        "median": statistics.median(firsts) if firsts else None,
        "min": min(firsts, default=None),
        "max": max(firsts, default=None),
        "median_total": statistics.median(r["total"] for r in runs),
        "done": sum(1 for r in runs if r["done"] and r["status"] == 200),
    }


def complete(url: str, tokens: int = 4, timeout: float = 120) -> dict[str, Any]:
    conn, headers, prefix = _connect(url, timeout)
    conn.request("POST", prefix + "/v1/chat/completions", body=_body(tokens, False), headers=headers)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = {}
    return {
        "status": response.status,
        "fingerprint": reply.get("system_fingerprint"),
        "body": raw[:200].decode("utf-8", "replace"),
    }


def websocket(url: str, message: str = "hello through nginx", timeout: float = 30) -> dict[str, Any]:
    """Handshake on /ws, send one masked text frame, read the echo."""
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    auth = ""
    if parts.username:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        auth = f"Authorization: Basic {token}\r\n"
    request = (
        f"GET {parts.path.rstrip('/')}/ws HTTP/1.1\r\nHost: {parts.hostname}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
    sock.sendall(request.encode())
    stream_file = sock.makefile("rb")
    status_line = stream_file.readline().decode("latin-1").strip()
    while stream_file.readline() not in (b"\r\n", b"\n", b""):
        pass
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    echoed = None
    if status == 101:
        payload = message.encode()
        mask = os.urandom(4)
        frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(frame)
        head = stream_file.read(2)
        length = head[1] & 0x7F
        echoed = stream_file.read(length).decode()
        sock.sendall(bytes([0x88, 0x80]) + os.urandom(4))  # close
    sock.close()
    return {"status": status, "echo": echoed}


def load(
    url: str, seconds: float, requests: int, concurrency: int, tokens: int = 1, fresh: bool = False
) -> dict[str, Any]:
    """Non-streamed completions from `concurrency` keep-alive connections (a new one per request when `fresh`),
    bounded in time and count."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    issued = [0]

    def worker() -> None:
        conn, headers, prefix = _connect(url, 30)
        while time.monotonic() < deadline:
            with lock:
                if issued[0] >= requests:
                    break
                issued[0] += 1
            started = time.monotonic()
            response = None
            try:
                conn.request("POST", prefix + "/v1/chat/completions", body=_body(tokens, False), headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException) as exc:
                ok, response = False, None
                conn.close()
                conn, headers, prefix = _connect(url, 30)
                with lock:
                    errors.append(type(exc).__name__)
            if fresh and response is not None:
                conn.close()
                conn, headers, prefix = _connect(url, 30)
            elapsed = time.monotonic() - started
            with lock:
                if ok:
                    latencies.append(elapsed)
                elif len(errors) < 1000 and response is not None:
                    errors.append(f"status {response.status}")
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None

    return {"ok": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)), "wall": wall,
            "rps": len(latencies) / wall, "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99)}  # fmt: skip


def status(url: str, timeout: float = 60) -> dict[str, Any]:
    """The status of one GET of the URL itself (its path whole, not a base)."""
    conn, headers, _ = _connect(url, timeout)
    conn.request("GET", urllib.parse.urlsplit(url).path or "/", headers=headers)
    response = conn.getresponse()
    response.read()
    return {"status": response.status}


def answer(output: str) -> dict[str, Any]:
    """What a run of this client printed, read back by its caller: the JSON object on the last line."""
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["stream", "ttft", "complete", "websocket", "load", "status"])
    parser.add_argument("url")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--message", default="hello through nginx")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "stream":
        result = stream(args.url, args.tokens)
    elif args.mode == "ttft":
        result = ttft(args.url, args.repeat, args.tokens)
    elif args.mode == "complete":
        result = complete(args.url, args.tokens)
    elif args.mode == "websocket":
        result = websocket(args.url, args.message)
    elif args.mode == "status":
        result = status(args.url)
    else:
        result = load(args.url, args.seconds, args.requests, args.concurrency, args.tokens, args.fresh)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
