"""``--quiesce unix:PATH`` where PATH is a QEMU chardev socket: the bytes go through a
virtio-serial port to the agent, which reads it as a character device, not as a socket.

No VM runs here, so a stand-in plays QEMU's part as QEMU does it (``-chardev
socket,server=on,wait=off`` wired to a ``virtserialport``): it listens on a unix socket, takes
one host connection at a time and copies bytes both ways between it and the guest end of the
port, a pty the agent opens as its ``listen.virtio_serial``. Lines the agent writes while no
host is connected stay in the port, as they do in QEMU, for the next host to skip.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.snapshots.cycle import take
from host.snapshots.target import load_snapshot, open_target
from tests.helpers.env import need_root
from tests.helpers.freeze import frozen_now
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.root


class Chardev:
    """QEMU's socket chardev: a listening unix socket in front of the port's host end."""

    def __init__(self, path: Path, port_fd: int) -> None:
        self.port_fd = port_fd
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.path = path
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            if not select.select([self.listener], [], [], 0.1)[0]:
                continue
            conn, _ = self.listener.accept()
            with conn:
                self._shuttle(conn)

    def _shuttle(self, conn: socket.socket) -> None:
        while not self.stopped.is_set():
            ready = select.select([conn, self.port_fd], [], [], 0.1)[0]
            try:
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        return  # the host went away; what the guest writes next waits
                    os.write(self.port_fd, data)
                if self.port_fd in ready:
                    conn.sendall(os.read(self.port_fd, 65536))
            except ConnectionError:
                return  # as QEMU: what was on its way to a host that left is lost

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def chardev(short_tmp: Path, start_agent, ext4) -> Iterator[tuple[Chardev, object]]:
    need_root()
    host_end, guest_end = os.openpty()
    tty.setraw(host_end)
    tty.setraw(guest_end)
    agent = start_agent(
        {
            "listen": {
                "unix": str(short_tmp / "agent.sock"),
                "virtio_serial": os.ttyname(guest_end),
            },
            "filesystems": {"mounts": [ext4.path]},
        }
    )
    bridge = Chardev(short_tmp / "qemu-chardev.sock", host_end)
    yield bridge, agent
    bridge.close()
    os.close(host_end)
    os.close(guest_end)


def waiting_in_port(bridge: Chardev) -> int:
    """Bytes the guest wrote that no host has read yet (FIONREAD on the port's host end)."""
    return struct.unpack("i", fcntl.ioctl(bridge.port_fd, termios.FIONREAD, b"\0" * 4))[0]


def quiesced_snapshot(disk_dir: Path, name: str, bridge: Chardev):  # type: ignore[no-untyped-def]
    target = open_target(disk_dir)
    try:
        return take(target, name, f"unix:{bridge.path}")
    finally:
        target.close()


def test_a_quiesced_snapshot_through_a_chardev_and_a_virtio_serial_port(
    chardev, disk_dir, ext4
) -> None:
    bridge, _ = chardev
    out = quiesced_snapshot(disk_dir, "over-serial", bridge)
    assert out.confirmed and out.consistency == "filesystem"
    assert not frozen_now(ext4.path)
    snap = load_snapshot(disk_dir, "over-serial")
    assert snap["consistency"] == "filesystem"
    assert snap["report"]["agent"]["writers"][0]["state"] == "thawed"


def test_a_reply_left_in_the_port_by_an_earlier_host_is_skipped(chardev, disk_dir) -> None:
    bridge, _ = chardev
    # an earlier host's request reached the guest and that host left before the answer:
    # with no host connected the chardev reads nothing, so the answer waits in the port
    os.write(bridge.port_fd, b'{"execute": "status", "id": "someone-else"}\n')
    assert wait_until(lambda: waiting_in_port(bridge) > 0, timeout=5.0, poll=0.02)
    out = quiesced_snapshot(disk_dir, "after-a-stale-reply", bridge)
    assert out.confirmed and out.consistency == "filesystem"
