"""The intent record, ``DISK/intent.json``: what a multi-step operation is about to do.

An operation writes it (atomically) before its first step and removes it after its last, so
that ``Disk.open`` can roll the operation forward or back after a crash
(``docs/internals/disk-format.md`` lists the steps and what each crash leaves).

Raises CorruptFile (a damaged record) and DiskError/NoSpace (writing it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from host.engine.durable import unlink_durably, write_json
from host.engine.errors import CorruptFile

INTENT = "intent.json"


def read_intent(folder: Path) -> dict[str, Any] | None:
    """The pending intent record, or None. A damaged record is a CorruptFile."""
    path = folder / INTENT
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw)
    except ValueError as err:
        raise CorruptFile(f"{path}: the intent record is not valid JSON ({err})", path) from err
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise CorruptFile(f"{path}: the intent record has no 'op'", path)
    return obj


def write_intent(folder: Path, record: dict[str, Any]) -> None:
    write_json(folder / INTENT, record)


def clear_intent(folder: Path) -> None:
    unlink_durably(folder / INTENT)
