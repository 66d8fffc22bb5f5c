"""The demo server and the client the smoke checks use, against each other on loopback (real sockets)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from provision import demo_server
from provision.smoke import llm_client, serving_checks


def start(*args: str) -> tuple[str, demo_server.Server]:
    server = demo_server.serve(demo_server.options(["--host", "127.0.0.1", "--port", "0", *args]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture
def url() -> Iterator[str]:
    base, server = start("--token-delay", "0.02", "--tokens", "10")
    yield base
    server.shutdown()
    server.server_close()


def test_stream_arrives_token_by_token(url: str) -> None:
    reply = llm_client.stream(url, tokens=10)
    assert reply["status"] == 200 and reply["done"]
    assert reply["content_type"] == "text/event-stream"
    assert reply["events"] == 12  # the role, ten tokens, the finish
    assert reply["separate_arrivals"] >= 10
    assert reply["ttft"] < reply["total"] / 3
    assert reply["text"].startswith("Tokens arrive one by one")


def test_completion_and_load(url: str) -> None:
    assert llm_client.complete(url, tokens=2)["status"] == 200
    result = llm_client.load(url, seconds=5, requests=12, concurrency=3, tokens=1)
    assert result["ok"] == 12 and result["errors"] == 0
    assert 0.02 <= result["p50"] <= result["p99"]


def test_websocket_echo(url: str) -> None:
    assert llm_client.websocket(url, "héllo") == {"status": 101, "echo": "héllo"}


def test_failing_health_answers_503() -> None:
    base, server = start("--fail-health")
    try:
        conn, _, _ = llm_client._connect(base, 5)
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.status == 503 and b"fail-health" in response.read()
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200  # only health fails: the gate must look at /health first
    finally:
        server.shutdown()
        server.server_close()


def test_websocket_frames_round_trip() -> None:
    import io

    for size in (5, 300, 70000):
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        frame = demo_server.encode_frame(0x2, payload, mask=b"\x01\x02\x03\x04")
        assert demo_server.read_frame(io.BytesIO(frame)) == (0x2, payload)


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [(1, [("inference", 8000)]), (3, [("inference-1", 8000), ("inference-2", 8001), ("inference-3", 8002)])],
)
def test_replica_units_are_named_as_the_role_names_them(replicas: int, expected: list) -> None:
    names = {"inference_name": "inference", "inference_port": 8000, "inference_replicas": replicas}
    assert serving_checks.replica_units(names) == expected


def test_a_stop_waits_for_requests_in_flight_but_not_for_idle_connections() -> None:
    base, server = start("--token-delay", "0.1", "--tokens", "10")
    idle, _, _ = llm_client._connect(base, 5)
    idle.request("GET", "/health")
    idle.getresponse().read()  # a keep-alive connection, now idle (as nginx keeps them)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(llm_client.complete(base, tokens=10)))
    worker.start()
    while server.in_flight == 0:
        threading.Event().wait(0.01)
    server.shutdown()
    server.server_close()
    assert server.drain(timeout=5)
    worker.join()
    assert result["status"] == 200
