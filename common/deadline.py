"""One point in time on the monotonic clock, made once per bounded operation and handed down.

Every blocking call under it is bounded by what remains (``remaining()``); a freeze, a call to
the agent, a wait for a server all use one. Never ``time.time()`` for an interval: an NTP
step would stretch or cut it.
"""

from __future__ import annotations

import time


class Deadline:
    """``seconds`` from now, on ``time.monotonic()``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.at = self.start + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def elapsed(self) -> float:
        return time.monotonic() - self.start
