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
    assert 0.02 <= result["p50"] <= result["p95"] <= result["p99"]


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
    # Its request ends on the server after the client has read the answer: wait for that, or the request seen in
    # flight below could be this one, and the worker's connection, not accepted yet, be reset by server_close().
    assert server.drain(timeout=5)
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


# ---- /metrics: vLLM's names, measured ------------------------------------------------------------------


def scrape(base: str) -> dict[str, float]:
    """The server's /metrics as {series: value} (the text format's sample lines)."""
    conn, _, _ = llm_client._connect(base, 5)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    samples = [line.rsplit(" ", 1) for line in response.read().decode().splitlines() if not line.startswith("#")]
    return {series: float(value) for series, value in samples}


def test_metrics_count_what_was_served(url: str) -> None:
    llm_client.stream(url, tokens=4)
    llm_client.complete(url, tokens=3)
    metrics = scrape(url)
    labels = 'model_name="demo"'
    assert metrics[f"vllm:generation_tokens_total{{{labels}}}"] == 7
    assert metrics[f'vllm:request_success_total{{{labels},finished_reason="stop"}}'] == 2
    assert metrics[f"vllm:num_requests_running{{{labels}}}"] == 0
    assert metrics[f"vllm:num_requests_waiting{{{labels}}}"] == 0
    assert metrics[f"vllm:kv_cache_usage_perc{{{labels}}}"] == 0
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        assert metrics[f"{histogram}_count{{{labels}}}"] == 2
        assert metrics[f'{histogram}_bucket{{{labels},le="+Inf"}}'] == 2
    # Each first token came after one token delay (20 ms), each reply after all of its tokens.
    assert metrics[f"vllm:time_to_first_token_seconds_sum{{{labels}}}"] >= 2 * 0.02
    assert metrics[f"vllm:e2e_request_latency_seconds_sum{{{labels}}}"] >= (4 + 3) * 0.02


def test_requests_beyond_the_concurrency_limit_wait_in_line() -> None:
    base, server = start("--token-delay", "0.05", "--tokens", "20", "--max-concurrency", "1")
    labels = 'model_name="demo"'
    try:
        streams = [threading.Thread(target=llm_client.stream, args=(base, 20)) for _ in range(3)]
        for thread in streams:
            thread.start()
        seen = []
        for _ in range(200):  # until the three are in: one generating, two waiting (bounded, no timing asserted)
            metrics = scrape(base)
            seen.append(
                (metrics[f"vllm:num_requests_running{{{labels}}}"], metrics[f"vllm:num_requests_waiting{{{labels}}}"])
            )
            if seen[-1] == (1, 2):
                break
            threading.Event().wait(0.01)
        assert seen[-1] == (1, 2), seen
        assert metrics[f"vllm:kv_cache_usage_perc{{{labels}}}"] == 1.0
        assert max(running for running, _ in seen) == 1  # never more than the limit at once
        for thread in streams:
            thread.join()
        metrics = scrape(base)
        assert metrics[f"vllm:num_requests_waiting{{{labels}}}"] == 0
        assert metrics[f"vllm:time_to_first_token_seconds_count{{{labels}}}"] == 3
        # The last in line waited for two whole replies (2 x 20 tokens x 50 ms) before its first token.
        assert metrics[f'vllm:time_to_first_token_seconds_bucket{{{labels},le="1.0"}}'] <= 2
        # As vLLM's does, each TTFT counts from the request's arrival, its wait in line included: the second waited
        # for one whole reply, the third for two, each then one token delay (sleeps are lower bounds).
        waits = (0 + 1 + 2) * 20 * 0.05
        assert metrics[f"vllm:time_to_first_token_seconds_sum{{{labels}}}"] >= waits + 3 * 0.05
    finally:
        server.shutdown()
        server.server_close()


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = demo_server.Histogram((0.1, 1.0))
    for value in (0.1, 0.5, 1.0, 3.0):
        histogram.observe(value)
    assert histogram.lines("h", 'a="b"') == [
        'h_bucket{a="b",le="0.1"} 1',
        'h_bucket{a="b",le="1.0"} 3',
        'h_bucket{a="b",le="+Inf"} 4',
        'h_sum{a="b"} 4.6',
        'h_count{a="b"} 4',
    ]


def test_metrics_parse_as_prometheus_text(require_promtool: str) -> None:
    """promtool parses the exposition; its only complaint is the colon that vLLM's names have."""
    import subprocess

    metrics = demo_server.Metrics(2)
    metrics.first_token(0)
    metrics.finished(0, 3)
    checked = subprocess.run(
        [require_promtool, "check", "metrics"], input=metrics.exposition('de"mo'), capture_output=True, text=True
    )
    problems = (checked.stdout + checked.stderr).splitlines()
    assert problems and all(line.endswith("metric names should not contain ':'") for line in problems), problems


def test_max_concurrency_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        demo_server.options(["--max-concurrency", "0"])
    assert "--max-concurrency must be at least 1, not 0" in capsys.readouterr().err
