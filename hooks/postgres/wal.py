"""WAL positions and names, pure: an LSN as a number, a segment's file name, a size setting,
and the segments a backup needs.

Raises: ValueError (a size that PostgreSQL would not print).
"""

from __future__ import annotations

import re
from typing import Any

START = re.compile(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)")
MAX_LISTED = 256  # a backup spanning more segments reports no wal_files list


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> int."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def wal_file_name(timeline: int, segno: int, seg_size: int) -> str:
    """The name of WAL segment ``segno`` (XLogFileName)."""
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_size(text: str) -> int:
    """A PostgreSQL size setting as SHOW prints it ('16MB', '1GB', '8192kB') -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*(B|kB|MB|GB|TB)?\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    unit = {"B": 1, None: 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
    return int(m.group(1)) * unit[m.group(2)]


def backup_wal(label: str, stop_lsn: str, seg_size: int) -> dict[str, Any]:
    """The WAL a backup needs, from its backup_label and stop LSN: ``timeline``,
    ``wal_file_start``, ``wal_file_stop`` and ``wal_files`` (every segment in between, or
    none when there are more than MAX_LISTED)."""
    m = START.search(label)
    start_file = m.group(2) if m else None
    timeline = int(start_file[:8], 16) if start_file else 1
    first = parse_lsn(m.group(1)) // seg_size if m else None
    last = max(parse_lsn(stop_lsn) - 1, 0) // seg_size
    files = (
        [wal_file_name(timeline, s, seg_size) for s in range(first, last + 1)]
        if first is not None and last - first < MAX_LISTED
        else []
    )
    return {
        "timeline": timeline,
        "wal_file_start": start_file,
        "wal_file_stop": wal_file_name(timeline, last, seg_size),
        "wal_files": files,
    }
