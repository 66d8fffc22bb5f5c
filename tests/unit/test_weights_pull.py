"""The weights_pull module, run as Ansible runs it (a script with its arguments in a file), against the lab's
file server on loopback: resume, mirror fallback, corruption, space, records.  The same module runs on the
lab VMs in tests/integration/test_3_weights.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import library_modules
import pytest

from testkit.fileserver import Fault, FileServer, make_file

MODULE = Path(__file__).resolve().parents[2] / "playbooks/roles/weights/library/weights_pull.py"
wp = library_modules.load(MODULE)  # for the functions; the module as a whole runs as Ansible runs it
BIG = 24 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    make_file(root / "model.safetensors", BIG, seed=1)
    make_file(root / "config.json", 300, seed=2)
    make_file(root / "sub/tokenizer.json", 5000, seed=3)
    with FileServer(root) as files:
        yield files


def locked(server: FileServer) -> list[dict]:
    out = []
    for path in ("config.json", "model.safetensors", "sub/tokenizer.json"):
        data = (server.root / path).read_bytes()
        out.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return out


def model(server: FileServer, dest: Path, mirrors: tuple[str, ...] = ("m1",), **extra: object) -> dict:
    return {
        "name": "tiny", "dest": str(dest), "model": "org/tiny", "revision": "abc",
        "files": locked(server),
        "mirrors": [f"http://127.0.0.1:{server.port}/{m}/{{path}}" for m in mirrors],
        **extra,
    }  # fmt: skip


def run(tmp_path: Path, models: list[dict], check: bool = False, **params: object) -> tuple[int, dict]:
    args = {
        "models": models, "progress_file": str(tmp_path / "progress.json"), "lock_dir": str(tmp_path / "locks"),
        "retries": 0, **params,
    }  # fmt: skip
    if check:
        args["_ansible_check_mode"] = True
    argsfile = tmp_path / "args.json"
    argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run([sys.executable, str(MODULE), str(argsfile)], capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    return proc.returncode, result


def test_pull_places_verified_files_and_a_second_run_only_stats_them(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "models/tiny"
    rc, result = run(tmp_path, [model(server, dest)])
    assert rc == 0 and result["changed"], result
    for f in locked(server):
        assert hashlib.sha256((dest / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert not list(dest.rglob("*.part"))
    record = json.loads((dest / ".provision-weights.json").read_text())
    assert set(record["files"]) == {"config.json", "model.safetensors", "sub/tokenizer.json"}
    assert json.loads((tmp_path / "progress.json").read_text())["done"] == sum(f["size"] for f in locked(server))

    server.clear()
    rc, again = run(tmp_path, [model(server, dest)])
    assert rc == 0 and not again["changed"], again
    assert "3 of 3 files verified" in again["summary"]
    assert server.requests() == [], "a converged run must not download"


def test_a_dropped_connection_leaves_a_part_that_the_next_run_resumes(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    server.fault("m1", "model.safetensors", Fault(drop_after=BIG // 2, times=1))
    rc, result = run(tmp_path, [model(server, dest)])
    assert rc != 0 and "model.safetensors" in result["msg"] and "connection" in result["msg"], result
    assert not (dest / "model.safetensors").exists()
    assert (dest / "model.safetensors.part").stat().st_size == BIG // 2

    rc, result = run(tmp_path, [model(server, dest)])
    assert rc == 0, result
    assert [r.range for r in server.requests("model.safetensors")][-1] == f"bytes={BIG // 2}-"
    assert [r.status for r in server.requests("model.safetensors")][-1] == 206
    assert "resumed at 12.0 MiB" in result["summary"]
    assert hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest() == locked(server)[1]["sha256"]


def test_retries_resume_within_the_same_run(server: FileServer, tmp_path: Path) -> None:
    server.fault("m1", "model.safetensors", Fault(drop_after=BIG // 3, times=1))
    rc, result = run(tmp_path, [model(server, tmp_path / "tiny")], retries=1)
    assert rc == 0, result
    assert [r.range for r in server.requests("model.safetensors")] == [None, f"bytes={BIG // 3}-"]


def test_a_stalled_connection_times_out_and_keeps_its_part(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    server.fault("m1", "model.safetensors", Fault(stall_after=BIG // 4, stall_seconds=5, times=1))
    rc, result = run(tmp_path, [model(server, dest)], timeout=1)
    assert rc != 0
    assert "no data for 1 s" in result["msg"], result["msg"]
    assert (dest / "model.safetensors.part").stat().st_size == BIG // 4
    rc, result = run(tmp_path, [model(server, dest)], timeout=1)
    assert rc == 0, result
    assert hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest() == locked(server)[1]["sha256"]


def test_a_server_that_ignores_range_restarts_the_file_cleanly(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    dest.mkdir()
    (dest / "model.safetensors.part").write_bytes(b"x" * 1000)  # garbage prefix from somewhere
    server.fault("m1", "model.safetensors", Fault(ignore_range=True))
    rc, result = run(tmp_path, [model(server, dest)])
    assert rc == 0, result
    assert hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest() == locked(server)[1]["sha256"]


def test_a_bad_resumed_prefix_is_retried_from_zero_on_the_same_mirror(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    dest.mkdir()
    (dest / "model.safetensors.part").write_bytes(b"x" * 1000)  # server honours Range: digest fails, then fresh
    rc, result = run(tmp_path, [model(server, dest)])
    assert rc == 0, result
    assert [r.range for r in server.requests("model.safetensors")] == ["bytes=1000-", None]


def test_a_corrupt_mirror_is_rejected_and_the_next_one_used(server: FileServer, tmp_path: Path) -> None:
    server.fault("m1", "config.json", Fault(corrupt=True))
    rc, result = run(tmp_path, [model(server, tmp_path / "tiny", mirrors=("m1", "m2"))])
    assert rc == 0, result
    line = next(line for line in result["summary"].splitlines() if line.startswith("tiny/config.json"))
    assert f"from http://127.0.0.1:{server.port}/m2/config.json" in line
    assert f"rejected http://127.0.0.1:{server.port}/m1/config.json: sha256 " in line


def test_when_every_mirror_is_corrupt_the_host_fails_and_nothing_is_placed(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    for mirror in ("m1", "m2"):
        server.fault(mirror, "config.json", Fault(corrupt=True))
    rc, result = run(tmp_path, [model(server, dest, mirrors=("m1", "m2"))])
    assert rc != 0
    expected = locked(server)[0]["sha256"]
    assert f"tiny: config.json: no mirror served the locked file (expected sha256 {expected}" in result["msg"]
    assert result["msg"].count("sha256 ") == 3 and "/m1/config.json" in result["msg"] and "/m2/" in result["msg"]
    assert not (dest / "config.json").exists() and not (dest / "config.json.part").exists()
    assert (dest / "model.safetensors").exists(), "the good files are still placed"


def test_a_file_changed_on_disk_is_reported_and_replaced(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    assert run(tmp_path, [model(server, dest)])[0] == 0
    target = dest / "model.safetensors"
    st = target.stat()
    with open(target, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only ctime and bytes differ
    for deep in (False, True):
        rc, result = run(tmp_path, [model(server, dest)], mode="verify", deep=deep)
        assert rc != 0 and "tiny: corrupt model.safetensors (sha256 " in result["msg"], result
    rc, result = run(tmp_path, [model(server, dest)])
    assert rc == 0 and result["changed"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == locked(server)[1]["sha256"]
    rc, result = run(tmp_path, [model(server, dest)], mode="verify", deep=True)
    assert rc == 0 and "3 of 3 files verified, re-hashed" in result["summary"]


def test_not_enough_space_fails_before_any_download(server: FileServer, tmp_path: Path) -> None:
    huge = model(server, tmp_path / "tiny")
    huge["files"][1]["size"] = 1 << 50
    rc, result = run(tmp_path, [huge])
    assert rc != 0
    assert result["msg"].startswith("not enough space on /") and ": need 1024.0 TiB, have " in result["msg"]
    assert server.requests() == []


def test_check_mode_and_check_only_change_nothing(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    for kwargs in ({"check": True}, {"mode": "check"}):
        rc, result = run(tmp_path, [model(server, dest)], **kwargs)
        assert rc == 0 and result["changed"] and result["needed"] and len(result["todo"]) == 3
        assert not dest.exists() and server.requests() == []


def test_paths_outside_the_model_directory_are_refused(server: FileServer, tmp_path: Path) -> None:
    bad = model(server, tmp_path / "tiny")
    bad["files"][0]["path"] = "../escape"
    rc, result = run(tmp_path, [bad])
    assert rc != 0 and "file '../escape': path must be relative" in result["msg"]
    assert not (tmp_path / "escape").exists()


def test_the_token_goes_only_to_its_hosts_over_https_and_is_never_shown(server: FileServer, tmp_path: Path) -> None:
    secret = "hf_" + "s3cr3t" * 5
    # The file server's host is listed, but it speaks plain HTTP: the token must not travel in clear text.
    rc, result = run(tmp_path, [model(server, tmp_path / "tiny")], token=secret, token_hosts=["127.0.0.1"])
    assert rc == 0
    assert secret not in json.dumps(result)
    assert server.requests() and all(r.authorization is None for r in server.requests())
    # Over HTTPS: only to the hosts it belongs to, and their subdomains.
    hosts = ["huggingface.co", "hf-mirror.com."]
    assert wp.token_allowed("https://huggingface.co/org/m/resolve/main/x", hosts)
    assert wp.token_allowed("https://cdn-lfs.HuggingFace.co/x", hosts)
    assert wp.token_allowed("https://hf-mirror.com:443/x", hosts)
    assert not wp.token_allowed("http://huggingface.co/x", hosts)
    assert not wp.token_allowed("https://evilhuggingface.co/x", hosts)
    assert not wp.token_allowed("https://huggingface.co.evil.example/x", hosts)
    assert not wp.token_allowed("https://my-bucket.oss-cn-hangzhou.aliyuncs.com/x", hosts)
    assert not wp.token_allowed("https://huggingface.co/x", [])


def test_the_progress_file_carries_the_line_the_controller_shows(server: FileServer, tmp_path: Path) -> None:
    rc, _ = run(tmp_path, [model(server, tmp_path / "tiny")])
    state = json.loads((tmp_path / "progress.json").read_text())
    assert rc == 0 and state["finished"]
    assert state["summary"].startswith("24.0 MiB of 24.0 MiB (100%), 3/3 files, "), state


def test_downloads_go_through_the_configured_proxy(server: FileServer, tmp_path: Path) -> None:
    # The mirror's name does not resolve; only a proxy (here the file server, which serves absolute URLs too)
    # can fetch it.
    unreachable = model(server, tmp_path / "tiny")
    unreachable["mirrors"] = ["http://mirror.invalid/m1/{path}"]
    rc, result = run(tmp_path, [unreachable], proxy=f"http://127.0.0.1:{server.port}")
    assert rc == 0, result
    assert {r.path for r in server.requests()} == {"/m1/config.json", "/m1/model.safetensors", "/m1/sub/tokenizer.json"}


def test_the_sink_writes_and_hashes_every_block_in_order(tmp_path: Path) -> None:
    data = os.urandom(3 * wp.CHUNK + 12345)
    hasher = hashlib.sha256()
    with open(tmp_path / "out", "wb") as fh:
        sink = wp.Sink(fh, hasher)
        at = 0
        # More blocks than the pool holds, of uneven sizes: the receiver must wait for buffers to come back.
        for n in [wp.CHUNK, 1, wp.CHUNK - 1, 77, wp.CHUNK, 12345 - 78 + 1, 0] * 3:
            piece = data[at : at + n]
            if not piece:
                continue
            buf = sink.block()
            buf[: len(piece)] = piece
            sink.put(buf, len(piece))
            at += len(piece)
        sink.close()
    assert at == len(data)
    assert (tmp_path / "out").read_bytes() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_write_error_reaches_the_receiver() -> None:
    with open("/dev/full", "wb", buffering=0) as fh:  # every write: ENOSPC
        sink = wp.Sink(fh, hashlib.sha256())
        with pytest.raises(OSError) as raised:
            for _ in range(2 * wp.Sink.BLOCKS):  # the error is raised by block() once the writer has met it
                sink.put(sink.block(), 10)
        assert raised.value.errno == 28
        with pytest.raises(OSError):
            sink.close()


def test_the_sha256_code_chosen_by_measurement_gives_the_same_digests() -> None:
    probe = "import hashlib, sys; print(hashlib.sha256(bytes(range(256)) * 40000).hexdigest())"
    env = {**os.environ, **wp.SCALAR_SHA256}
    scalar = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert scalar.stdout.strip() == hashlib.sha256(bytes(range(256)) * 40000).hexdigest()
    assert wp.sha256_rate() > 0 and wp.sha256_rate(wp.SCALAR_SHA256) > 0
    assert wp.fastest_sha256_env() in ({}, wp.SCALAR_SHA256)


def test_the_check_measures_the_hash_only_when_there_is_something_to_pull(server: FileServer, tmp_path: Path) -> None:
    m = model(server, tmp_path / "tiny")
    rc, result = run(tmp_path, [m], mode="check")
    assert rc == 0 and result["needed"] and "hash_env" in result
    rc, pulled = run(tmp_path, [m])
    assert rc == 0 and pulled["changed"]
    rc, result = run(tmp_path, [m], mode="check")
    assert rc == 0 and not result["needed"] and result["hash_env"] == {}


def test_a_second_pull_of_the_same_model_waits_for_the_first_and_keeps_its_bytes(
    server: FileServer, tmp_path: Path
) -> None:
    """What a `provision up` run again while an interrupted run's pull still goes on does on the host."""
    dest = tmp_path / "tiny"
    # The first pull stalls 4 s at 8 MiB, then resumes (one retry): long enough to start a second one beside it.
    server.fault("m1", "model.safetensors", Fault(stall_after=8 << 20, stall_seconds=4, times=1))
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    args = {"models": [model(server, dest)], "lock_dir": str(tmp_path / "locks"), "retries": 1, "timeout": 2}

    def start(where: Path) -> subprocess.Popen[str]:
        argsfile = where / "args.json"
        argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "progress_file": str(where / "p.json")}}))
        return subprocess.Popen([sys.executable, str(MODULE), str(argsfile)], stdout=subprocess.PIPE, text=True)

    first = start(first_dir)
    deadline = time.monotonic() + 30
    while not (dest / "model.safetensors.part").exists():
        assert time.monotonic() < deadline, "the first pull never started writing"
        time.sleep(0.05)
    second = start(second_dir)
    waiting = ""
    while second.poll() is None and "waiting for the pull" not in waiting:
        waiting = (second_dir / "p.json").read_text() if (second_dir / "p.json").exists() else ""
        time.sleep(0.05)
    assert f"already running here (pid {first.pid})" in waiting, waiting
    first_out, _ = first.communicate(timeout=60)
    second_out, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, (first_out, second_out)
    result = json.loads(second_out)
    assert result["changed"] and f"placed by the pull that was already running (pid {first.pid})" in result["summary"]
    for f in locked(server):
        assert hashlib.sha256((dest / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert not list(dest.rglob("*.part"))
    # Only the first pull downloaded: the stalled request and its resume, one request per other file.
    assert len(server.requests("model.safetensors")) == 2
    for where in (first_dir, second_dir):
        state = json.loads((where / "p.json").read_text())
        assert state["finished"] is True and isinstance(state["pid"], int)


def test_the_progress_file_says_finished_when_a_pull_fails(server: FileServer, tmp_path: Path) -> None:
    huge = model(server, tmp_path / "tiny")
    huge["files"][1]["size"] = 1 << 50
    rc, _ = run(tmp_path, [huge])
    state = json.loads((tmp_path / "progress.json").read_text())
    assert rc != 0 and state["finished"] is True and isinstance(state["pid"], int)
