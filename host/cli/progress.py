"""Progress lines for long engine operations (merges, exports): done, rate, time left.

Written to stderr, redrawn in place on a terminal and at most every few seconds otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIB = 1024 * 1024


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Callable ``(done, total)`` that prints ``what: 12.0/64.0 MiB 19% 210 MiB/s ETA 0:00:03``."""

    def __init__(self, what: str, stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.finished = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        final = done >= total
        if self.finished or (not final and now - self.last < (0.2 if self.tty else 5.0)):
            return
        self.finished = final
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = (total - done) / rate if rate > 0 else 0.0
        line = (
            f"{self.what}: {human_bytes(done)}/{human_bytes(total)} {pct:3.0f}% "
            f"{rate / MIB:.1f} MiB/s ETA {int(eta) // 3600}:{int(eta) // 60 % 60:02d}:"
            f"{int(eta) % 60:02d}"
        )
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if final and self.tty:
            self.stream.write("\n")
        self.stream.flush()
