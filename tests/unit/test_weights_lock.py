"""The weights lockfile: made from a directory or an endpoint, read back, and refused when malformed."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision.weights import lockfile
from provision.weights.lockfile import LockError
from testkit.fileserver import FileServer, make_file


def model_dir(root: Path) -> Path:
    make_file(root / "model.safetensors", 3 << 20, seed=1)
    make_file(root / "config.json", 200, seed=2)
    make_file(root / "tok/tokenizer.json", 900, seed=3)
    (root / ".git").mkdir()
    (root / ".git/HEAD").write_text("ref")
    return root


def test_a_lock_from_a_directory_hashes_every_file_and_reads_back_the_same(tmp_path: Path) -> None:
    root = model_dir(tmp_path / "m")
    lock = lockfile.from_directory(root, "org/m", "v1")
    assert [f.path for f in lock.files] == ["config.json", "model.safetensors", "tok/tokenizer.json"]
    for f in lock.files:
        assert f.sha256 == hashlib.sha256((root / f.path).read_bytes()).hexdigest()
        assert f.origin == "hashed"
    out = tmp_path / "m.lock.yml"
    out.write_text(lockfile.dump(lock))
    assert lockfile.load(out) == lock


def test_a_lock_from_an_endpoint_pins_the_commit_and_says_which_digests_it_did_not_hash(tmp_path: Path) -> None:
    root = model_dir(tmp_path / "m")
    notes: list[str] = []
    with FileServer(root, lfs_threshold=1 << 20) as server:
        lock = lockfile.from_endpoint(f"http://127.0.0.1:{server.port}/hf", "org/m", "main", note=notes.append)
        requested = [r.path for r in server.requests()]
    assert len(lock.revision) == 40 and lock.revision != "main"
    origins = {f.path: f.origin for f in lock.files}
    assert origins["model.safetensors"] == "lfs-metadata" and origins["config.json"] == "downloaded"
    assert notes == [
        f"1 of 3 files are locked with the sha256 from http://127.0.0.1:{server.port}/hf's LFS metadata, not hashed "
        "here (origin: lfs-metadata); the weights role verifies every byte against it on pull"
    ]
    assert f"/hf/org/m/resolve/{lock.revision}/config.json" in requested
    assert not any(p.endswith("model.safetensors") for p in requested), "the big file is not downloaded to lock it"
    for f in lock.files:
        assert f.sha256 == hashlib.sha256((root / f.path).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version: expected 1, found 2"),
        ({"model": ""}, "model: missing or not a string"),
        ({"files": []}, "files: expected a non-empty list"),
        ({"files": [{"path": "../x", "size": 1, "sha256": "0" * 64}]}, "files[0].path: '../x' must be relative"),
        ({"files": [{"path": "/etc/x", "size": 1, "sha256": "0" * 64}]}, "files[0].path: '/etc/x' must be relative"),
        ({"files": [{"path": "a", "size": -1, "sha256": "0" * 64}]}, "files[0].size: expected a whole number"),
        ({"files": [{"path": "a", "size": 1, "sha256": "XYZ"}]}, "files[0].sha256: expected 64 lowercase hex"),
        ({"files": [{"path": "a", "size": 1, "sha256": "0" * 64}] * 2}, "files[1].path: 'a' is listed twice"),
    ],
)
def test_a_malformed_lockfile_is_refused_naming_the_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    data = {"version": 1, "model": "m", "revision": "r", "files": [{"path": "a", "size": 1, "sha256": "0" * 64}]}
    path = tmp_path / "bad.lock.yml"
    path.write_text(yaml.safe_dump({**data, **change}))
    with pytest.raises(LockError) as raised:
        lockfile.load(path)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)


def test_a_yaml_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.lock.yml"
    path.write_text("version: 1\nfiles: [a\n")
    with pytest.raises(LockError, match=rf"^{path}:3:1: "):
        lockfile.load(path)


def test_plan_resolves_lockfiles_against_the_inventory_and_checks_mirrors(tmp_path: Path) -> None:
    lock = lockfile.from_directory(model_dir(tmp_path / "m"), "org/m", "v1")
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks/m.yml").write_text(lockfile.dump(lock))
    models = [{"name": "m", "lockfile": "locks/m.yml", "owner": "debian"}]
    planned = lockfile.plan(models, str(tmp_path), "/srv/models", ["https://x/{model}/resolve/{revision}/{path}"])
    assert planned[0]["dest"] == "/srv/models/m" and planned[0]["revision"] == "v1"
    assert planned[0]["owner"] == "debian" and len(planned[0]["files"]) == 3
    with pytest.raises(LockError, match=r"weights_models\[0\]\.mirrors: 'https://x/\{repo\}/\{path\}': only"):
        lockfile.plan(models, str(tmp_path), "/srv/models", ["https://x/{repo}/{path}"])
    with pytest.raises(LockError, match=r"weights_models\[0\]\.mirrors: 'https://x/' has no \{path\}"):
        lockfile.plan(models, str(tmp_path), "/srv/models", ["https://x/"])
    with pytest.raises(LockError, match=r"weights_models\[0\]\.name: '\.\./x' must be a plain directory name"):
        lockfile.plan([{"name": "../x", "lockfile": "locks/m.yml"}], str(tmp_path), "/srv/models", ["{path}"])
    with pytest.raises(LockError, match=r"locks/none.yml: cannot read the weights lockfile"):
        lockfile.plan([{"name": "m", "lockfile": "locks/none.yml"}], str(tmp_path), "/srv/models", ["{path}"])


def test_the_lock_command_writes_a_lockfile_and_refuses_two_sources(run_cli: Any, tmp_path: Path) -> None:
    root = model_dir(tmp_path / "m")
    out = tmp_path / "m.lock.yml"
    result = run_cli("weights", "lock", str(root), "--model", "org/m", "--revision", "v1", "-o", str(out))
    assert result.code == 0, result.err
    assert "3 files" in result.err and lockfile.load(out).model == "org/m"
    both = run_cli("weights", "lock", str(root), "--model", "m", "--endpoint", "http://127.0.0.1:1")
    assert both.code == 2 and "either a local model directory or --endpoint" in both.err
    missing = run_cli("weights", "verify", "-i", str(tmp_path / "nowhere.yml"))
    assert missing.code == 2 and "nowhere.yml" in missing.err


class _Answer(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def answering(body: bytes) -> Iterator[str]:
    """An HTTP server on loopback that answers every GET with `body`; yields its URL."""
    handler = type("Handler", (_Answer,), {"body": body})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


@contextlib.contextmanager
def not_http() -> Iterator[str]:
    """A loopback listener that answers one connection with a line that is not HTTP."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        thread.join()


def _refused() -> str:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: connections are refused


NOT_HF = "not a Hugging Face-compatible answer"


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (contextlib.nullcontext(_refused()), "Connection refused"),
        (not_http(), "no HTTP answer (BadStatusLine"),
        (answering(b"<html><body>Welcome to nginx!</body></html>"), NOT_HF),
        (answering(b'["a", "list"]'), NOT_HF),
        (answering(b'{"sha": "0123", "siblings": ["config.json"]}'), NOT_HF),
        (
            answering(
                b'{"sha": "0123", "siblings": [{"rfilename": "w", "lfs": {"sha256": "'
                + b"a" * 64
                + b'", "size": "x"}}]}'
            ),
            NOT_HF,
        ),
        (contextlib.nullcontext("127.0.0.1:8080"), "unknown url type"),
    ],
    ids=["refused", "not-http", "html", "json-list", "siblings-not-objects", "lfs-size-not-a-number", "no-scheme"],
)
def test_the_lock_command_with_a_bad_endpoint_says_so_in_one_line(
    run_cli: Any, endpoint: contextlib.AbstractContextManager[str], message: str
) -> None:
    with endpoint as url:
        result = run_cli("weights", "lock", "--model", "org/m", "--endpoint", url)
    assert result.code != 0
    assert result.err.count("\n") == 1 and result.err.startswith("provision: error: "), result.err
    assert f"{url}/api/models/org/m/revision/main" in result.err and message in result.err
    assert result.out == ""


def test_the_lock_command_with_an_unwritable_output_says_so_in_one_line(run_cli: Any, tmp_path: Path) -> None:
    root = model_dir(tmp_path / "m")
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "m.lock.yml"
    result = run_cli("weights", "lock", str(root), "--model", "org/m", "-o", str(out))
    assert result.code == 2
    assert result.err == f"provision: error: -o: cannot write {out}: Not a directory\n"
