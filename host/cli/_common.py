"""What every ``quiesce-host`` verb needs: the disk opened here or the answer of the server that
holds it, the help text of a DISK argument, sizes with units, and the error line.

While ``quiesce-host serve`` serves a disk it holds the disk's writer lock, and a verb that
opens the disk meets ``DiskBusy``. ``open_or_ask`` is the one place that then turns to the
server's control socket (borg's ``with_repository`` gives its verbs the open repository the
same way): the verb says what to do with the open ``Disk`` and what to ask the ``Server``,
and gets either result.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from common.errors import QuiesceError
from host.engine.disk import Disk
from host.engine.errors import DiskBusy, DiskError

T = TypeVar("T")

DISK_HELP = "the disk folder (made by 'quiesce-host disk create'); may be served"

UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``64M``, ``1G``, ``1.5G``, ``64MiB`` → bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M, 1G, 1048576)")
    return int(float(m[1]) * UNITS[m[2].upper()])


def error(message: str) -> None:
    """The error line of a verb that returns its own exit code: ``quiesce-host: error: ...``."""
    print(f"quiesce-host: error: {message}", file=sys.stderr)


class Server:
    """The ``quiesce-host serve`` that holds a busy disk, as a verb sees it."""

    def __init__(self, disk: str, busy: DiskBusy) -> None:
        self.disk = disk
        self.busy = busy

    def ask(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> Any:
        """The server's reply to ``command``.

        Raises the ``DiskBusy`` again when no server serves the disk (something else holds
        it), and DiskError naming the command when the server refuses it.
        """
        # the control client is imported here, not at the top: only a busy disk needs it,
        # and it would be a third of what every 'disk' verb imports at start
        from host.serve.control_client import request, socket_path

        if not socket_path(self.disk).exists():
            raise self.busy
        try:
            return request(self.disk, command, arguments or {}, timeout=timeout)
        except QuiesceError as err:  # unreachable, no reply, or an error reply
            raise DiskError(f"{self.disk}: the server refused {command}: {err}", self.disk) from err

    def status(self) -> dict[str, Any] | None:
        """The server's ``status`` (the progress of its export, say), or None if it does not
        answer within 5 s."""
        from host.serve.control_client import request  # as in ask()

        try:
            reply: dict[str, Any] = request(self.disk, "status", timeout=5.0)
        except QuiesceError:
            return None
        return reply

    def refuse(self, why: str) -> NoReturn:
        """What the verb would do cannot be done under a server: ``DiskBusy``, saying why."""
        raise DiskBusy(f"{self.busy}; {why}", self.busy.path) from self.busy


def open_or_ask(
    disk: str,
    here: Callable[[Disk], T],
    there: Callable[[Server], T],
    *,
    readonly: bool = False,
) -> T:
    """``here(disk)`` with the disk opened in this process (and closed after), or, when it is
    locked, ``there(server)``, which asks the server holding it or refuses."""
    try:
        opened = Disk.open(disk, readonly=readonly)
    except DiskBusy as busy:
        return there(Server(disk, busy))
    with opened:
        return here(opened)
