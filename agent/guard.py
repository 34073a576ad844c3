"""The dead-man guard: a small process outside the daemon that thaws what the daemon froze.

FIFREEZE outlives the process that issued it, and Linux has no freeze timeout. So the daemon
starts this guard once at start-up (every import done before any freeze) and tells it, over a
pipe, each filesystem just before it is frozen and the ceiling deadline. The guard thaws with
FITHAW (it never execs a program, which could live on a frozen filesystem):

- at once when the pipe closes while something is held (the daemon died, even by SIGKILL);
- at the ceiling deadline plus a short grace, if the daemon has not released by then
  (its main loop or its ceiling thread is stuck);
- and if the daemon still has not disarmed a few seconds after that, it SIGKILLs the daemon,
  which closes its database sessions and so releases their locks.

Messages (one JSON object per line): {"arm": MONOTONIC_DEADLINE}, {"hold": PATH},
{"release": PATH}, {"disarm": true}. CLOCK_MONOTONIC is system-wide, so deadlines are
absolute. The guard writes only to stderr.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from hooks.kernel import thaw_path

THAW_GRACE = 0.5  # seconds after the ceiling before the guard thaws in the daemon's place
KILL_GRACE = 5.0  # seconds after that before it kills a daemon that never disarmed


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"quiesce-agent guard[{os.getpid()}]: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass


class Guard:
    """The guard's state: what is held and until when."""

    def __init__(self, daemon_pid: int) -> None:
        self.daemon_pid = daemon_pid
        self.held: list[str] = []
        self.deadline: float | None = None
        self.thawed_at_ceiling = False

    def handle(self, msg: dict[str, object]) -> None:
        if "arm" in msg:
            self.deadline = float(msg["arm"])  # type: ignore[arg-type]
            self.thawed_at_ceiling = False
        elif "hold" in msg:
            path = str(msg["hold"])
            if path not in self.held:
                self.held.append(path)
        elif "release" in msg:
            path = str(msg["release"])
            if path in self.held:
                self.held.remove(path)
        elif "disarm" in msg:
            self.deadline = None

    def thaw_all(self, why: str) -> None:
        for path in reversed(self.held):
            try:
                was = thaw_path(path)
                _say(f"{why}: thawed {path}" if was else f"{why}: {path} was not frozen")
            except OSError as err:
                _say(f"{why}: FITHAW {path} failed: {err.strerror}")
        self.held.clear()

    def timeout(self) -> float | None:
        if self.deadline is None:
            return None
        if not self.thawed_at_ceiling:
            return max(0.0, self.deadline + THAW_GRACE - time.monotonic())
        return max(0.0, self.deadline + THAW_GRACE + KILL_GRACE - time.monotonic())

    def on_timeout(self) -> None:
        if not self.thawed_at_ceiling:
            self.thaw_all("ceiling reached and the daemon did not release")
            self.thawed_at_ceiling = True
            return
        _say(f"daemon {self.daemon_pid} still holds locks past the ceiling; killing it")
        try:
            os.kill(self.daemon_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.deadline = None


def run(daemon_pid: int, fd: int = 0) -> int:
    """Serve the pipe until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C for the daemon is not for us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    guard = Guard(daemon_pid)
    buf = b""
    while True:
        ready, _, _ = select.select([fd], [], [], guard.timeout())
        if not ready:
            guard.on_timeout()
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            if guard.held:
                guard.thaw_all("the daemon went away while holding a freeze")
            return 0
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            try:
                guard.handle(json.loads(line))
            except (ValueError, TypeError) as err:
                _say(f"ignored a bad message: {err}")


class GuardClient:
    """The daemon's end of the pipe."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-B", "-m", "agent.guard", str(os.getpid())],
            stdin=subprocess.PIPE,
            start_new_session=True,
            env=env,
            close_fds=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> None:
        """Restart the guard if it died; a freeze without a guard is refused by the caller."""
        if not self.alive():
            self.start()

    def _send(self, msg: dict[str, object]) -> None:
        if self.proc is None or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def arm(self, deadline: float) -> None:
        self._send({"arm": deadline})

    def hold(self, path: str, held: bool) -> None:
        self._send({"hold" if held else "release": path})

    def disarm(self) -> None:
        self._send({"disarm": True})

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc = None


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1])))
