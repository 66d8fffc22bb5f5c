"""The weights smoke check's comparison: each way a host's files can disagree with the lock is reported."""

from __future__ import annotations

from typing import Any

import pytest

from provision.smoke.weight_checks import problems, stray_models

MODEL = {"name": "m", "dest": "/srv/models/m", "files": [{"path": "a", "size": 3, "sha256": "1" * 64}]}
STAT = {"size": 3, "mtime_ns": 10, "ctime_ns": 11, "ino": 12}


@pytest.mark.parametrize(
    ("snap", "expected"),
    [
        ({"record": {"a": {**STAT, "sha256": "1" * 64}}, "stat": {"a": STAT}}, []),
        ({"record": None, "stat": {"a": STAT}}, ["m: no verification record in /srv/models/m (run provision up)"]),
        ({"record": {}, "stat": {"a": None}}, ["m: a is missing"]),
        ({"record": {}, "stat": {"a": {**STAT, "size": 4}}}, ["m: a has 4 bytes, the lock says 3"]),
        ({"record": {"a": {**STAT, "sha256": "2" * 64}}, "stat": {"a": STAT}},
         ["m: a is not recorded as verified against the lockfile's digest"]),
        ({"record": {"a": {**STAT, "sha256": "1" * 64}}, "stat": {"a": {**STAT, "ctime_ns": 99}}},
         ["m: a changed after it was verified (run provision weights verify --deep)"]),
    ],
)  # fmt: skip
def test_problems(snap: dict[str, Any], expected: list[str]) -> None:
    assert problems(MODEL, snap) == expected


def test_stray_models() -> None:
    found = ["/srv/models/m", "/srv/models/old"]
    assert stray_models(found, [MODEL]) == [
        "/srv/models/old: a model directory with a verification record, not in weights_models"
    ]
    assert stray_models([], []) == []
