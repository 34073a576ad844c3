"""A running ``quiesce-host serve`` in a child process, its output lines collected."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import threading
import time

from host.lab.local import console_script
from tests.helpers.env import REPO


class Served:
    """A running ``quiesce-host serve ARGS``; stopped (and unmounted) on cleanup."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.errfile = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [console_script("quiesce-host"), "serve", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self.errfile,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    @property
    def stderr(self) -> str:
        self.errfile.seek(0)
        return self.errfile.read()

    def wait_for(self, prefix: str, timeout: float = 20) -> str:
        return self.wait_all(prefix, 1, timeout, start=True)[0]

    def wait_all(
        self, text: str, count: int, timeout: float = 20, *, start: bool = False
    ) -> list[str]:
        """The first ``count`` lines that hold ``text`` (that start with it, if ``start``):
        a VM's server prints one line per disk it serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                ln for ln in list(self.lines) if (ln.startswith(text) or not start and text in ln)
            ]
            if len(found) >= count:
                return found[:count]
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {count} {text!r} lines; got {self.lines}, stderr: {self.stderr}")

    @property
    def uri(self) -> str:
        return self.wait_for("serving ").rsplit(" ", 1)[1]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self.reader.join(5)
        return code
