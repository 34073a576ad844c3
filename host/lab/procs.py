"""Child processes of the labs: each in its own session, every wait bounded, killed as a group.

``run_logged`` runs a command to completion with its output appended to a log file, handing
each new line to a ``progress`` callback; ``kill_group`` ends a child and whatever it started
(SIGTERM to its process group, a grace, SIGKILL, then a psutil sweep of descendants that left
the group, as patroni's CancellableExecutor does); ``tail`` gives a log's last lines for an
error message. A Ctrl-C in the middle kills the child before it propagates;
``interrupt_on_sigterm`` makes a SIGTERM do the same in a command-line entry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil


def interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so that the clean-up of a Ctrl-C runs for it too
    (children in their own sessions would otherwise outlive a terminated parent)."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def run_logged(
    cmd: list[str],
    logfile: Path,
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> int | None:
    """Run ``cmd`` (stdin /dev/null, stdout and stderr to ``logfile``); its exit code, or None
    when it ran past ``timeout`` seconds and was killed."""
    with open(logfile, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        start = out.tell()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
            env=env, start_new_session=True,
        )  # fmt: skip
        try:
            return _wait(proc, timeout, logfile, start, progress)
        except BaseException:
            kill_group(proc)
            raise


def _wait(
    proc: subprocess.Popen[bytes],
    timeout: float,
    logfile: Path,
    pos: int,
    progress: Callable[[str], None] | None,
) -> int | None:
    """Poll the child twice a second, passing on its complete new lines."""
    until = time.monotonic() + timeout
    while True:
        rc = proc.poll()
        if progress is not None:
            with open(logfile, "rb") as f:
                f.seek(pos)
                done, newline, _ = f.read().rpartition(b"\n")
            pos += len(done) + len(newline)
            for line in done.decode("utf-8", "replace").splitlines():
                progress(line)
        if rc is not None:
            return rc
        if time.monotonic() > until:
            kill_group(proc)
            return None
        time.sleep(0.5)


def kill_group(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM to the child's process group, ``grace`` seconds, SIGKILL; reap the child, then
    SIGKILL any descendant that had left the group."""
    try:
        strays = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        strays = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()
    for p in strays:
        try:
            p.kill()
        except psutil.Error:
            pass


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or why it cannot be read), for a message."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as err:
        return f"({path}: {err.strerror})"
    return "\n".join(text.splitlines()[-lines:])
