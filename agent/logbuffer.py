"""Logging that never writes to a frozen filesystem.

Records go to stderr (journald under systemd, with ``<N>`` priority prefixes when
JOURNAL_STREAM says stderr is the journal). While anything is frozen they are held in memory
(bounded; the oldest are dropped and counted) and written out after the thaw, because stderr
may be a file on a filesystem we froze, and a write there would block the daemon. Each held
record also goes to ``mirror`` (the dead-man guard, agent/guard.py), which writes them out if
the daemon dies before it can; ``flushed`` is told once the daemon wrote them itself.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TextIO

MAX_HELD = 10000
PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class HoldingHandler(logging.Handler):
    """A stderr handler that can hold records in memory while frozen."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.journal = bool(os.environ.get("JOURNAL_STREAM"))
        self.held: deque[str] = deque(maxlen=MAX_HELD)
        self.dropped = 0
        self.holding = False
        self.mirror: Callable[[str], None] | None = None
        self.flushed: Callable[[], None] | None = None
        self._mu = threading.Lock()
        fmt = (
            "%(name)s: %(message)s"
            if self.journal
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self.setFormatter(logging.Formatter(fmt))

    def _line(self, record: logging.LogRecord) -> str:
        text = self.format(record)
        if self.journal:
            return f"<{PRIORITY.get(record.levelno, 6)}>{text}\n"
        return text + "\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._line(record)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
            return
        with self._mu:
            held = self.holding
            if held:
                if len(self.held) == self.held.maxlen:
                    self.dropped += 1
                self.held.append(line)
        if not held:
            self._write(line)
        elif self.mirror is not None:
            self.mirror(line)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def hold(self, on: bool) -> None:
        """Start holding records (on) or write out everything held (off)."""
        with self._mu:
            self.holding = on
            if on:
                return
            lines, self.held = list(self.held), deque(maxlen=MAX_HELD)
            dropped, self.dropped = self.dropped, 0
        if dropped:
            lines.insert(0, f"({dropped} log lines dropped while frozen)\n")
        if lines:
            self._write("".join(lines))
        if self.flushed is not None:
            self.flushed()


def setup(level: int = logging.INFO) -> HoldingHandler:
    handler = HoldingHandler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return handler
