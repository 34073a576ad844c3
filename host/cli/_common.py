"""What every ``quiesce-host`` verb needs: the help text of a DISK argument, sizes with units,
and the request to the ``quiesce-host serve`` that holds a busy disk."""

from __future__ import annotations

import argparse
import re
from typing import Any

from host.engine.disk import DiskBusy, DiskError
from host.serve.control import ServeError, request, socket_path

DISK_HELP = "the disk folder (made by 'quiesce-host disk create'); may be served"

UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``64M``, ``1G``, ``1.5G``, ``64MiB`` → bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M, 1G, 1048576)")
    return int(float(m[1]) * UNITS[m[2].upper()])


def ask_server(
    disk: str, command: str, arguments: dict[str, Any], busy: DiskBusy, timeout: float = 60.0
) -> Any:
    """Ask the ``quiesce-host serve`` holding ``disk``; re-raise ``busy`` if none serves it."""
    if not socket_path(disk).exists():
        raise busy
    try:
        return request(disk, command, arguments, timeout=timeout)
    except ServeError as err:
        raise DiskError(f"{disk}: the server refused {command}: {err}", disk) from err
