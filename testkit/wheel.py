"""The wheel a user builds from this checkout (`pipx install .`, `pip wheel .`), for the tests that look at what
it installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testkit.lab import ROOT


def work_tree(into: Path) -> Path:
    """The checkout's files as git sees them (committed or not, ignored ones left out): what a user builds from."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            (into / name).write_bytes(source.read_bytes())
    return into


def build_wheel(work: Path) -> Path:
    """Build the checkout's wheel from its files as git sees them, under `work`; return the wheel's path."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = work_tree(work / "source")
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(source)], check=True)
    (wheel,) = (work / "dist").glob("provision-*.whl")
    return wheel
