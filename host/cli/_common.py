"""What every ``quiesce-host`` verb needs: the disk (or VM) opened here or the answer of the
server that holds it, the help text of a DISK or VM argument, sizes with units, the error line.

While ``quiesce-host serve`` serves a disk it holds the disk's writer lock, and a verb that
opens the disk meets ``DiskBusy``. ``open_or_ask`` is the one place that then turns to the
server's control socket (borg's ``with_repository`` gives its verbs the open repository the
same way): the verb says what to do with the open ``Disk`` and what to ask the ``Server``,
and gets either result.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from common.errors import QuiesceError
from host.engine.disk import Disk
from host.engine.errors import DiskBusy, DiskError
from host.engine.vm import VM, open_any

T = TypeVar("T")
Opened = TypeVar("Opened", Disk, Disk | VM)

DISK_HELP = "the disk folder (made by 'quiesce-host disk create'); may be served"
VM_HELP = "the VM folder (made by 'quiesce-host vm create'); may be served"
EITHER_HELP = (
    "a disk folder ('quiesce-host disk create') or a VM folder ('quiesce-host vm create'), "
    "told apart by what it holds (a VM has vm.json; it acts on every disk as one); may be served"
)

UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``64M``, ``1G``, ``1.5G``, ``64MiB`` → bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M, 1G, 1048576)")
    return int(float(m[1]) * UNITS[m[2].upper()])


def report_check(
    folder: str, problems: list[str], reopen: Callable[[], object], as_json: bool
) -> int:
    """Print what a ``check`` found and return its exit code: 0 clean, 1 problems but the
    folder still opens (``reopen``, read-only), else the code of what stops the open."""
    code = 1 if problems else 0
    if problems:
        try:
            reopen()
        except DiskError as err:
            code = err.exit_code
    if as_json:
        print(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    elif problems:
        for p in problems:
            print(f"problem: {p}")
    else:
        print(f"{folder}: no problems found")
    return code


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
        from agent.protocol.errors import Refused
        from host.serve.control_client import request, socket_path

        if not socket_path(self.disk).exists():
            raise self.busy
        try:
            return request(self.disk, command, arguments or {}, timeout=timeout)
        except Refused as err:  # an error reply: its class and reason, said once
            raise DiskError(
                f"{self.disk}: the server refused {command}: {err.error_class}: {err.desc}",
                self.disk,
            ) from err
        except QuiesceError as err:  # unreachable, or no reply
            raise DiskError(
                f"{self.disk}: the server did not answer {command}: {err}", self.disk
            ) from err

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
    return _here_or_there(Disk.open, disk, here, there, readonly)


def open_either_or_ask(
    folder: str,
    here: Callable[[Disk | VM], T],
    there: Callable[[Server], T],
    *,
    readonly: bool = False,
) -> T:
    """``open_or_ask`` for a folder that is a disk or a VM (``host.engine.vm.open_any``: a
    disk of a VM is refused for writing on its own). A served VM answers on the VM folder's
    control socket, as a served disk on the disk's."""
    return _here_or_there(open_any, folder, here, there, readonly)


def _here_or_there(
    opener: Callable[[str, bool], Opened],
    folder: str,
    here: Callable[[Opened], T],
    there: Callable[[Server], T],
    readonly: bool,
) -> T:
    try:
        opened = opener(folder, readonly)
    except DiskBusy as busy:
        return there(Server(folder, busy))
    with opened:
        return here(opened)
