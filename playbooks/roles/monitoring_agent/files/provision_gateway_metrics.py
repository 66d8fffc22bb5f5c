#!/usr/bin/python3
"""The gateway's own metrics for node exporter's textfile collector (installed by the monitoring_agent role).

nginx without NGINX Plus exports no status codes, so this reads what nginx's access log added since the last run
(the provision_upstream format records upstream_status) and counts the replicas' answers by status:
provision_nginx_upstream_responses_total{status}. It also exports provision_tls_certificate_not_after_seconds{path}
for every certificate nginx serves (its ssl_certificate lines, from `nginx -T`). Counters survive log rotation
(the state file remembers the log's inode and offset) and restarts.

    provision_gateway_metrics.py ACCESS_LOG STATE_FILE OUTPUT.prom
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable

STATUS = re.compile(r"\bupstream_status=([^\s,]+(?:(?:, | : )[^\s,]+)*)")
CERTIFICATE = re.compile(r"^\s*ssl_certificate\s+([^\s;]+)\s*;", re.M)


def count_statuses(lines: Iterable[str]) -> Counter[str]:
    """Upstream answers by status: one per upstream tried ("502, 200" is two); "error" when none answered."""
    counts: Counter[str] = Counter()
    for line in lines:
        match = STATUS.search(line)
        if not match:
            continue
        for status in match.group(1).replace(":", ",").split(","):
            status = status.strip()
            if status and status != "-":
                counts[status if status.isdigit() else "error"] += 1
    return counts


def certificate_paths(nginx_config: str) -> list[str]:
    return sorted(set(CERTIFICATE.findall(nginx_config)))


def not_after(path: str) -> float | None:
    """The certificate's notAfter as seconds since the epoch; None when it cannot be read."""
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError):
        return None
    return float(ssl.cert_time_to_seconds(decoded["notAfter"]))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(counts: Counter[str], certificates: dict[str, float | None]) -> str:
    name = "provision_nginx_upstream_responses_total"
    lines = [f"# HELP {name} Answers of the gateway's upstreams (the replicas) by status.", f"# TYPE {name} counter"]
    lines += [f'{name}{{status="{_label(status)}"}} {counts[status]}' for status in sorted(counts)]
    name = "provision_tls_certificate_not_after_seconds"
    lines += [f"# HELP {name} When a certificate nginx serves expires.", f"# TYPE {name} gauge"]
    lines += [f'{name}{{path="{_label(path)}"}} {when:.0f}' for path, when in sorted(certificates.items()) if when]
    return "\n".join(lines) + "\n"


def read_new_lines(log: str, state: dict) -> list[str]:
    """The lines added since the offset in `state` (from the start when the log was rotated); updates state."""
    try:
        with open(log, "rb") as stream:
            info = os.fstat(stream.fileno())
            offset = state.get("offset", 0)
            if info.st_ino != state.get("inode") or info.st_size < offset:
                offset = 0
            stream.seek(offset)
            data = stream.read()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
    state.update(inode=info.st_ino, offset=offset + len(complete))
    return complete.decode("utf-8", "replace").splitlines()


def write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, prefix=".provision-") as out:
        out.write(text)
    os.chmod(out.name, 0o644)
    os.replace(out.name, path)


def main(argv: list[str]) -> int:
    log, state_file, output = argv
    try:
        with open(state_file) as stream:
            state = json.load(stream)
    except (FileNotFoundError, ValueError):
        state = {}
    counts = Counter(state.get("counts", {}))
    counts.update(count_statuses(read_new_lines(log, state)))
    state["counts"] = dict(counts)
    config = subprocess.run(["nginx", "-T"], capture_output=True, text=True, check=False).stdout
    certificates = {path: not_after(path) for path in certificate_paths(config)}
    write_atomically(output, exposition(counts, certificates))
    write_atomically(state_file, json.dumps(state))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
