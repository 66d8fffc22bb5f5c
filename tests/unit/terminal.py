"""Driving a program on a pseudo-terminal (pty.fork), for tests of what a user at a terminal sees."""

from __future__ import annotations

import os
import select

# How long the program may stay silent before a wait for its output gives up (a guard against a hang).
SILENCE = 60


def read_until(fd: int, marker: bytes) -> bytes:
    """What the program shows until `marker` appears, it closes the terminal, or it is silent for SILENCE s."""
    shown = b""
    while marker not in shown and select.select([fd], [], [], SILENCE)[0]:
        chunk = read(fd)
        if not chunk:
            break
        shown += chunk
    return shown


def read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the program closed the terminal
        return b""
