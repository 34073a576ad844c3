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

When the daemon dies in the middle of a cycle (armed, or holding a filesystem), the guard,
after thawing, also tells the world what the dead daemon can no longer say:

- the host: the guard holds the daemon's virtio-serial port too (``--port-fd``, the same open
  file), so the port stays open through the death (the guest kernel drops nothing the host
  queued) and the guard writes one error line to it, with no id, which the host's client
  takes as the answer to its pending call: ``NotConsistent``, the daemon died while frozen.
  Nothing is written when no host is connected (the write would block: skipped), so no
  later host reads a stale notice. The guard closes the port when it exits, and the next
  daemon opens it;
- the journal: the log lines the daemon held in memory while frozen (agent/logbuffer.py) are
  mirrored to the guard as they are held, and written by it to stderr (journald) after the
  thaw; the daemon tells it when it wrote them itself.

Messages (one JSON object per line): {"arm": MONOTONIC_DEADLINE}, {"hold": PATH},
{"release": PATH}, {"disarm": true}, {"log": LINE}, {"logged": true}. CLOCK_MONOTONIC is
system-wide, so deadlines are absolute. The guard writes only to stderr and the port.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from agent.protocol.errors import NOT_CONSISTENT
from hooks.kernel import thaw_path

THAW_GRACE = 0.5  # seconds after the ceiling before the guard thaws in the daemon's place
KILL_GRACE = 5.0  # seconds after that before it kills a daemon that never disarmed
MAX_LOG_LINES = 10000  # as agent/logbuffer.py holds at most


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
        self.logs: deque[str] = deque(maxlen=MAX_LOG_LINES)  # held by the daemon, unwritten

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
        elif "log" in msg:
            self.logs.append(str(msg["log"]))
        elif "logged" in msg:
            self.logs.clear()

    def in_cycle(self) -> bool:
        """Is a freeze under way (armed at the first lock, or a filesystem held)?"""
        return self.deadline is not None or bool(self.held)

    def daemon_died(self, port_fd: int | None) -> None:
        """The pipe closed: thaw, tell the host (if a cycle was under way), write the logs."""
        in_cycle = self.in_cycle()
        held = list(self.held)
        if held:
            self.thaw_all("the daemon went away while holding a freeze")
        if in_cycle and port_fd is not None:
            _notify_host(port_fd, self.daemon_pid, held)
        if self.logs:
            _say(f"{len(self.logs)} log line(s) the daemon held while frozen follow")
            try:
                sys.stderr.write(
                    "".join(line if line.endswith("\n") else line + "\n" for line in self.logs)
                )
                sys.stderr.flush()
            except OSError:
                pass
            self.logs.clear()

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


def _notify_host(port_fd: int, daemon_pid: int, thawed: list[str]) -> None:
    """One error line for the host on the virtio-serial port; skipped if no host is there."""
    what = f"its guard thawed {', '.join(thawed)}" if thawed else "nothing was left frozen"
    line = json.dumps(
        {
            "error": {
                "class": NOT_CONSISTENT,
                "desc": f"quiesce-agent (pid {daemon_pid}) died in the middle of a freeze; "
                f"{what}; the snapshot is NOT consistent (journalctl -u quiesce-agent)",
            }
        }
    )
    try:
        os.set_blocking(port_fd, False)
        os.write(port_fd, line.encode() + b"\n")
        _say("told the host on the virtio-serial port that the daemon died")
    except OSError as err:
        if err.errno != errno.EAGAIN:  # EAGAIN: no host connected; nobody to tell
            _say(f"could not tell the host: {err.strerror}")


def run(daemon_pid: int, fd: int = 0, port_fd: int | None = None) -> int:
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
            guard.daemon_died(port_fd)
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
        self.port_fd: int | None = None
        self._mu = threading.Lock()  # messages come from the loop, writer and ceiling threads

    def start(self) -> None:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        argv = [sys.executable, "-B", "-m", "agent.guard", str(os.getpid())]
        if self.port_fd is not None:
            argv += ["--port-fd", str(self.port_fd)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            start_new_session=True,
            env=env,
            close_fds=True,
            pass_fds=() if self.port_fd is None else (self.port_fd,),
        )

    def attach_port(self, fd: int) -> None:
        """The daemon opened its virtio-serial port: restart the guard holding it too. Only
        call this while nothing is held (the old guard is stopped)."""
        self.port_fd = fd
        if self.proc is not None:
            self.stop()
            self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> None:
        """Restart the guard if it died; a freeze without a guard is refused by the caller."""
        if not self.alive():
            self.start()

    def _send(self, msg: dict[str, object]) -> None:
        with self._mu:
            if self.proc is None or self.proc.stdin is None:
                return
            try:
                self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def log(self, line: str) -> None:
        """A log line the daemon holds in memory: the guard writes it if the daemon dies."""
        self._send({"log": line})

    def logged(self) -> None:
        """The daemon wrote its held lines itself."""
        self._send({"logged": True})

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


def _main(argv: list[str]) -> int:
    port_fd = int(argv[3]) if len(argv) > 3 and argv[2] == "--port-fd" else None
    return run(int(argv[1]), port_fd=port_fd)


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
