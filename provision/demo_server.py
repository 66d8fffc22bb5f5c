"""A tiny OpenAI-compatible streaming server: the lab's stand-in for vLLM or TGI (CPU only, no model).

Standard library only, so the container image is a bare Debian rootfs with python3 and this one file.
Routes: GET /health, GET /v1/models, POST /v1/chat/completions (JSON, or SSE token by token with
`"stream": true`, ending with `data: [DONE]`), GET /ws (websocket echo), GET /metrics (Prometheus text).
Like vLLM it does not send `X-Accel-Buffering`, so an unbuffered stream through nginx proves nginx's own configuration.

    python3 demo_server.py --port 8000 --token-delay 0.05 --tokens 24

Every option also reads an environment variable (DEMO_PORT, DEMO_TOKEN_DELAY, ...), so an env file can
change behaviour without a new image; `--fail-health` (DEMO_FAIL_HEALTH=1) makes /health answer 503,
which is how tests deploy a server whose health check never passes.

Like vLLM it runs at most `--max-concurrency` completions at once (DEMO_MAX_CONCURRENCY); the rest wait in
line.  /metrics exports vLLM's names for what it really did: vllm:num_requests_running and _waiting, the
time-to-first-token and end-to-end latency histograms (vLLM's buckets; both count from the request's arrival,
so time spent waiting is in them), vllm:generation_tokens_total and vllm:kv_cache_usage_perc (the share of
the concurrency slots in use: each running request holds its KV cache).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
TEXT = (
    "Tokens arrive one by one, each as its own server-sent event, so a client that sees them trickle in "
    "knows that nothing between it and the model holds the stream back."
)
WORDS = TEXT.split(" ")


def options(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="OpenAI-compatible demo server (no model)")
    parser.add_argument("--host", default=env("DEMO_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(env("DEMO_PORT", "8000")))
    parser.add_argument("--model", default=env("DEMO_MODEL", "demo"), help="the model id /v1/models lists")
    parser.add_argument("--tokens", type=int, default=int(env("DEMO_TOKENS", "24")), help="tokens per reply")
    parser.add_argument(
        "--token-delay", type=float, default=float(env("DEMO_TOKEN_DELAY", "0.05")), help="seconds per token"
    )
    parser.add_argument(
        "--fail-health",
        action="store_true",
        default=env("DEMO_FAIL_HEALTH", "") not in ("", "0"),
        help="answer /health with 503 (a server that never becomes healthy)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=int(env("DEMO_MAX_CONCURRENCY", "8")),
        help="completions generated at once; more wait in line (vllm:num_requests_waiting)",
    )
    config = parser.parse_args(argv)
    if config.max_concurrency < 1:
        parser.error(f"--max-concurrency must be at least 1, not {config.max_concurrency}")
    return config


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked replies, as real servers do
    server_version = "provision-demo/1"
    config: argparse.Namespace  # set on the subclass made by serve()

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()

    # --- routes -------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self.server.begin()  # type: ignore[attr-defined]
        try:
            self._get()
        finally:
            self.server.end()  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.server.begin()  # type: ignore[attr-defined]
        try:
            self._post()
        finally:
            self.server.end()  # type: ignore[attr-defined]

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            if self.config.fail_health:
                self._json(503, {"status": "unhealthy", "reason": "--fail-health is set"})
            else:
                self._json(200, {"status": "ok"})
        elif path == "/v1/models":
            model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "provision-demo"}
            self._json(200, {"object": "list", "data": [model]})
        elif path == "/metrics":
            data = self.server.metrics.exposition(self.config.model).encode()  # type: ignore[attr-defined]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket_echo()
        else:
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def _post(self) -> None:
        arrived = time.monotonic()
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(request, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self._json(400, {"error": {"message": f"bad request body: {exc}", "type": "invalid_request_error"}})
            return
        if path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        tokens = _reply_tokens(request.get("max_tokens"), self.config.tokens)
        metrics: Metrics = self.server.metrics  # type: ignore[attr-defined]
        with metrics.slot():
            if request.get("stream"):
                self._stream(tokens, lambda: metrics.first_token(arrived))
            else:
                time.sleep(self.config.token_delay)
                metrics.first_token(arrived)
                time.sleep(self.config.token_delay * (len(tokens) - 1))
                self._json(200, self._completion(tokens))
            metrics.finished(arrived, len(tokens))

    # --- replies ------------------------------------------------------------------------------------------

    def _completion(self, tokens: list[str]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model,
            "system_fingerprint": socket.gethostname(),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(tokens), "total_tokens": len(tokens) + 1},
        }

    def _stream(self, tokens: list[str], first_token: Callable[[], None]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.config.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())

        event({"role": "assistant", "content": ""})
        for index, token in enumerate(tokens):
            time.sleep(self.config.token_delay)
            event({"content": token})
            if index == 0:
                first_token()
        event({}, "stop")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")  # the last chunk of a chunked body

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _websocket_echo(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            frame = read_frame(self.rfile)
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 0x8:  # close: answer it and stop
                self.wfile.write(encode_frame(0x8, payload[:2]))
                return
            reply = 0xA if opcode == 0x9 else opcode  # ping gets pong; text and binary come back as they were
            self.wfile.write(encode_frame(reply, payload))
            self.wfile.flush()


# vLLM's buckets (vllm/v1/metrics/loggers.py), so that queries and dashboards read the same.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count (the caller holds the lock)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        self.counts[next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, total = [], 0
        for bound, count in zip([*map(_number, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {total}')
        return [*out, f"{name}_sum{{{labels}}} {_number(self.sum)}", f"{name}_count{{{labels}}} {total}"]


class Metrics:
    """What the server did, under vLLM's metric names: slots (the concurrency limit), waits, latencies, tokens."""

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self.lock = threading.Condition()
        self.running = self.waiting = self.tokens = self.finished_requests = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the max_concurrency slots; wait in line (counted) while all are taken."""
        with self.lock:
            self.waiting += 1
            self.lock.wait_for(lambda: self.running < self.max_concurrency)
            self.waiting -= 1
            self.running += 1
        try:
            yield
        finally:
            with self.lock:
                self.running -= 1
                self.lock.notify()

    def first_token(self, arrived: float) -> None:
        with self.lock:
            self.ttft.observe(time.monotonic() - arrived)

    def finished(self, arrived: float, tokens: int) -> None:
        with self.lock:
            self.e2e.observe(time.monotonic() - arrived)
            self.tokens += tokens
            self.finished_requests += 1

    def exposition(self, model: str) -> str:
        """The Prometheus text format (version 0.0.4)."""
        labels = f'model_name="{_label(model)}"'
        with self.lock:
            gauges = [
                ("vllm:num_requests_running", "gauge", "Requests being generated now.", self.running),
                ("vllm:num_requests_waiting", "gauge", "Requests waiting for a slot.", self.waiting),
                ("vllm:kv_cache_usage_perc", "gauge", "KV cache in use, 1 is full (the share of slots taken).",
                 self.running / self.max_concurrency),
                ("vllm:generation_tokens_total", "counter", "Tokens generated.", self.tokens),
            ]  # fmt: skip
            lines = []
            for name, kind, text, value in gauges:
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {_number(value)}"]
            name = "vllm:request_success_total"
            lines += [f"# HELP {name} Requests answered in full.", f"# TYPE {name} counter",
                      f'{name}{{{labels},finished_reason="stop"}} {self.finished_requests}']  # fmt: skip
            for name, histogram, text in (
                ("vllm:time_to_first_token_seconds", self.ttft, "From arrival to the first token."),
                ("vllm:e2e_request_latency_seconds", self.e2e, "From arrival to the last token."),
            ):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram", *histogram.lines(name, labels)]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _reply_tokens(max_tokens: object, default: int) -> list[str]:
    count = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else default
    return [("" if i == 0 else " ") + WORDS[i % len(WORDS)] for i in range(count)]


def read_frame(stream: Any) -> tuple[int, bytes] | None:
    """One websocket frame (unfragmented): (opcode, unmasked payload), or None at end of stream."""
    head = stream.read(2)
    if len(head) < 2:
        return None
    opcode, masked, length = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", stream.read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", stream.read(8))
    mask = stream.read(4) if masked else b"\0\0\0\0"
    payload = stream.read(length)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """A final websocket frame; clients must mask (pass `mask`), servers must not."""
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, mask_bit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, length)
    if mask:
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


class Server(ThreadingHTTPServer):
    """Counts requests in flight, so that a stop can wait for them but not for idle keep-alive connections."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's default listen backlog of 5 resets connections in a burst

    def __init__(self, *args: Any, max_concurrency: int = 8) -> None:
        super().__init__(*args)
        self.metrics = Metrics(max_concurrency)
        self.in_flight = 0
        self.idle = threading.Condition()

    def begin(self) -> None:
        with self.idle:
            self.in_flight += 1

    def end(self) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if some still were after `timeout` seconds."""
        with self.idle:
            return self.idle.wait_for(lambda: self.in_flight == 0, timeout)


def serve(config: argparse.Namespace) -> Server:
    handler = type("ConfiguredHandler", (Handler,), {"config": config})
    return Server((config.host, config.port), handler, max_concurrency=config.max_concurrency)


def main(argv: list[str] | None = None) -> int:
    config = options(argv)
    server = serve(config)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it must run off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)  # PID 1 in a container ignores SIGTERM without a handler
    signal.signal(signal.SIGINT, stop)
    health = "failing on purpose (--fail-health)" if config.fail_health else "ok"
    print(
        f"provision demo server: model {config.model!r} on {config.host}:{config.port}, health {health}, "
        f"{config.max_concurrency} requests at once",
        flush=True,
    )
    server.serve_forever()
    server.server_close()  # no new connections from here on
    drained = server.drain(timeout=20)
    print(f"provision demo server: stopped ({'all requests answered' if drained else 'requests cut'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
