"""Waiting for something to happen in another thread or process, always bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, poll: float = 0.05) -> bool:
    """True as soon as ``cond()`` is true; False when ``timeout`` seconds pass first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return False


class Background:
    """A statement running in its own thread and connection; records when it finished."""

    def __init__(self, server: Any, sql: str) -> None:
        self.done_at: float | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(server, sql), daemon=True)
        self.thread.start()

    def _run(self, server: Any, sql: str) -> None:
        try:
            server.sql(sql)
        except BaseException as err:  # noqa: BLE001 - reported to the test
            self.error = err
        self.done_at = time.monotonic()

    def join(self, timeout: float = 15) -> float:
        self.thread.join(timeout)
        assert self.done_at is not None, "the statement never finished"
        return self.done_at - self.started
