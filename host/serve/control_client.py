"""The client side of a served disk's control socket: where it is, and one request to it.

``quiesce-host serve`` answers on ``DISK/.serve.sock`` in the agent's wire format, so the
request goes through the protocol's one client (``agent.protocol.Client``), with hints that
name the server instead of the agent.

Raises (agent/protocol/errors.py): Unreachable (nothing serves the disk, or it went away),
NoReply (no answer within the bound), Garbage, Refused (the server refused or failed;
``error_class`` says why: SnapshotNotFound, Refused, PauseTimeout, ...).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent import protocol

SOCKET_NAME = ".serve.sock"
MAX_LINE = 1024 * 1024  # requests and replies carry agent reports: a few hundred KiB at most
HINTS = {
    "unix": "no server is running for this disk; start one with 'quiesce-host serve'",
    "lost": "did 'quiesce-host serve' stop?",
    "peer": "the server",
    "garbage": "is this the control socket of 'quiesce-host serve'?",
}


def socket_path(disk: str | os.PathLike[str]) -> Path:
    """``DISK/.serve.sock`` for a disk folder; ``.NAME.serve.sock`` beside a raw image file."""
    path = Path(os.path.abspath(disk))
    if path.is_file():
        return path.parent / f".{path.name}{SOCKET_NAME}"
    return path / SOCKET_NAME


@contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A path to ``path`` that fits sun_path (107 bytes): via /proc/self/fd when too long."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


def request(
    disk_folder: str | os.PathLike[str],
    command: str,
    arguments: dict[str, Any] | None = None,
    timeout: float = 60.0,
) -> Any:
    """Send one command to the server of ``disk_folder``; its ``return`` value."""
    endpoint = protocol.Endpoint("unix", path=str(socket_path(disk_folder)))
    client = protocol.Client(
        endpoint,
        connect_timeout=min(timeout, protocol.CONNECT_TIMEOUT),
        hints=HINTS,
        max_reply=MAX_LINE,
    )
    with client:
        return client.call(command, arguments, timeout)
