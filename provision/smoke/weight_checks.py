"""What the weights smoke check compares: the lockfile's files against what a host has and has recorded.

One command on the host stats every locked file and reads the verification record; the comparison is a
pure function, unit-tested in tests/unit/test_weight_checks.py.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

RECORD = ".provision-weights.json"

# Runs on the host with its python3: the stat() of every locked file and the record beside them.
SNAPSHOT = r"""
import json, os, sys
dest, paths = sys.argv[1], json.loads(sys.argv[2])
try:
    with open(os.path.join(dest, ".provision-weights.json")) as fh:
        record = json.load(fh).get("files", {})
except (OSError, ValueError):
    record = None
stat = {}
for p in paths:
    try:
        st = os.stat(os.path.join(dest, p))
        stat[p] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
    except OSError:
        stat[p] = None
print(json.dumps({"record": record, "stat": stat}))
"""


def snapshot(host: Any, model: dict[str, Any]) -> dict[str, Any]:
    paths = json.dumps([f["path"] for f in model["files"]])
    out = host.check_output(f"python3 -c {shlex.quote(SNAPSHOT)} {shlex.quote(model['dest'])} {shlex.quote(paths)}")
    return dict(json.loads(out))


def problems(model: dict[str, Any], snap: dict[str, Any]) -> list[str]:
    """Every locked file present, of its locked size, and vouched for by a record entry that still matches it."""
    name, record, found = model["name"], snap.get("record"), []
    if record is None:
        return [f"{name}: no verification record in {model['dest']} (run provision up)"]
    for f in model["files"]:
        st = snap["stat"].get(f["path"])
        entry = record.get(f["path"]) or {}
        if st is None:
            found.append(f"{name}: {f['path']} is missing")
        elif st["size"] != f["size"]:
            found.append(f"{name}: {f['path']} has {st['size']} bytes, the lock says {f['size']}")
        elif entry.get("sha256") != f["sha256"]:
            found.append(f"{name}: {f['path']} is not recorded as verified against the lockfile's digest")
        elif any(entry.get(k) != v for k, v in st.items()):
            found.append(f"{name}: {f['path']} changed after it was verified (run provision weights verify --deep)")
    return found


def record_dirs(host: Any, root: str) -> list[str]:
    """The model directories under root that hold a verification record (what the weights role wrote)."""
    out = host.run(f"find {shlex.quote(root)} -mindepth 2 -maxdepth 2 -name {RECORD} -printf '%h\\n'")
    return sorted(line for line in out.stdout.splitlines() if line)


def stray_models(found: list[str], models: list[dict[str, Any]]) -> list[str]:
    """Models the weights role put under weights_root that the inventory no longer names."""
    configured = {m["dest"].rstrip("/") for m in models}
    return [f"{d}: a model directory with a verification record, not in weights_models" for d in found
            if d.rstrip("/") not in configured]  # fmt: skip
