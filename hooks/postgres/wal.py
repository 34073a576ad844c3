"""WAL positions and names, pure: an LSN as a number, a segment's file name, a size setting.

Raises: ValueError (a size that PostgreSQL would not print).
"""

from __future__ import annotations

import re


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
