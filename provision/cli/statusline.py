"""The live status line of a run on a terminal: elapsed time, hosts done with the current task, hosts failed, the
task (provision.events.status_line).

It is redrawn in place (carriage return, clear to the end of the line) after the run's events and once a second,
cut to the terminal's width (read at each redraw; a resize, SIGWINCH, redraws at once), and erased before any
other line is printed, so the run's lines read as they would without it. Only when stdout is a terminal (and TERM
is not "dumb"): to a pipe or a file, as in CI, the run's lines are plain and no control character is written.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import TextIO

from provision.cli.common import note, show
from provision.events import Line, Status, status_line

CLEAR = "\r\x1b[K"  # to the start of the line, and clear it
TICK = 1.0  # seconds between redraws while nothing happens (the elapsed time moves on)
EVENT_REDRAW = 0.1  # seconds between redraws for events, at least (a fleet's task brings hundreds at once)


def wanted(stream: TextIO) -> bool:
    """Whether a status line goes to `stream`: a terminal that understands the clear-line sequence."""
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class StatusLine:
    """Show a run's lines (`show`, `note`) and, on a terminal, where it stands (`status`); a context manager
    around the run. Without a terminal it only passes the lines on."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self._stream = stream or sys.stdout
        self.enabled = wanted(self._stream) if enabled is None else enabled
        self._lock = threading.Lock()
        self._status = Status()
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._on_screen = False
        self._wake = threading.Event()
        self._stopped = False
        self._ticker: threading.Thread | None = None
        self._previous_winch: object = None

    def __enter__(self) -> StatusLine:
        if not self.enabled:
            return self
        self._started = time.monotonic()
        self._ticker = threading.Thread(target=self._tick, name="status-line", daemon=True)
        self._ticker.start()
        if threading.current_thread() is threading.main_thread():
            self._previous_winch = signal.signal(signal.SIGWINCH, self._resized)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self.enabled:
            return
        if self._previous_winch is not None:  # first: its handler must not set _wake while this does
            signal.signal(signal.SIGWINCH, self._previous_winch)  # type: ignore[arg-type]
        self._stopped = True
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._erase()

    def show(self, line: Line) -> None:
        """A line of the run, printed where the status line was; the status line comes back below it."""
        with self._lock:
            self._erase()
            show(line)
            self._draw()

    def note(self, text: str) -> None:
        """A line about the run itself (stderr), likewise."""
        with self._lock:
            self._erase()
            note(text)
            self._draw()

    def status(self, status: Status) -> None:
        self._status = status
        if self.enabled and time.monotonic() - self._drawn_at >= EVENT_REDRAW:
            with self._lock:
                self._draw()

    def _resized(self, signum: int, frame: FrameType | None) -> None:
        self._wake.set()  # the ticker redraws, at the new width (a signal handler must not take the lock)

    def _tick(self) -> None:
        while not self._stopped:
            self._wake.wait(TICK)
            self._wake.clear()
            if not self._stopped:
                with self._lock:
                    self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        text = status_line(self._status, time.monotonic() - self._started, self._width())
        self._write(CLEAR + text)
        self._on_screen = True
        self._drawn_at = time.monotonic()

    def _erase(self) -> None:
        if self.enabled and self._on_screen:
            self._write(CLEAR)
            self._on_screen = False

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns or 80
        except (OSError, ValueError):
            return 80

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # the terminal has gone (SIGHUP): no more status lines
            self.enabled = False
