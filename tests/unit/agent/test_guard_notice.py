"""The guard outlives a dead daemon for a moment: it tells the host on the virtio-serial
port the daemon shared with it, and writes the log lines the daemon held while frozen."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from agent import protocol
from tests.helpers.env import REPO


def start_guard(port: socket.socket) -> subprocess.Popen[bytes]:
    fd = port.fileno()
    return subprocess.Popen(
        [sys.executable, "-m", "agent.guard", str(os.getpid()), "--port-fd", str(fd)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(fd,),
        cwd=REPO,
    )


def test_a_daemon_dying_mid_cycle_is_told_to_the_host_and_its_held_lines_written() -> None:
    host, guest_end = socket.socketpair()
    with host, guest_end:
        guard = start_guard(guest_end)
        assert guard.stdin is not None and guard.stderr is not None
        for msg in ({"arm": time.monotonic() + 60}, {"log": "<6>frozen 'nightly'\n"}):
            guard.stdin.write(json.dumps(msg).encode() + b"\n")
        guard.stdin.close()  # the daemon died
        guard.wait(10)
        host.settimeout(5)
        reply = protocol.parse_reply(host.recv(65536).split(b"\n")[0])
        assert "id" not in reply  # the host's pending call takes it for its own
        assert reply["error"]["class"] == protocol.NOT_CONSISTENT
        assert "died in the middle of a freeze" in reply["error"]["desc"]
        assert b"<6>frozen 'nightly'" in guard.stderr.read()


def test_a_daemon_that_wrote_its_lines_and_was_idle_leaves_nothing_to_say() -> None:
    host, guest_end = socket.socketpair()
    with host, guest_end:
        guard = start_guard(guest_end)
        assert guard.stdin is not None and guard.stderr is not None
        for msg in ({"arm": time.monotonic() + 60}, {"log": "x\n"}, {"logged": True}):
            guard.stdin.write(json.dumps(msg).encode() + b"\n")
        guard.stdin.write(b'{"disarm": true}\n')
        guard.stdin.close()
        guard.wait(10)
        host.setblocking(False)
        try:
            data = host.recv(65536)
        except BlockingIOError:
            data = b""
        assert data == b"" and b"x" not in guard.stderr.read()
