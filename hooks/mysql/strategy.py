"""Which backup lock, pure: the server's flavour and version, the ``auto`` choice, the refusal
of a strategy the server lacks, and statements masked for a message.

Nothing here talks to a server; hooks/mysql/writer.py asks and passes the answers in.
"""

from __future__ import annotations

import re


def parse_version(text: str) -> tuple[str, tuple[int, int, int]]:
    """'10.11.19-MariaDB-0+deb12u1-log' -> ('mariadb', (10, 11, 19))."""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    numbers = (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)
    return ("mariadb" if "mariadb" in text.lower() else "mysql"), numbers


def choose_lock(
    flavor: str, version: tuple[int, int, int], non_transactional: dict[str, int]
) -> tuple[str, str]:
    """The ``auto`` decision: (strategy, reason)."""
    if non_transactional:
        tables = ", ".join(f"{n} {e}" for e, n in sorted(non_transactional.items()))
        return "ftwrl", f"non-transactional user tables ({tables}) need FLUSH TABLES WITH READ LOCK"
    if flavor == "mariadb" and version >= (10, 4, 0):
        return "backup_stage", "MariaDB 10.4+ with transactional tables only"
    if flavor == "mysql" and version >= (8, 0, 0):
        return "instance_lock", "MySQL 8.0+ with transactional tables only"
    return "ftwrl", f"{flavor} {'.'.join(map(str, version))} has no lighter backup lock"


def refuse_lock(lock: str, flavor: str, version: tuple[int, int, int]) -> str | None:
    """Why ``lock`` cannot work on this server, or None."""
    shown = f"{'MariaDB' if flavor == 'mariadb' else 'MySQL'} {'.'.join(map(str, version))}"
    if lock == "backup_stage" and not (flavor == "mariadb" and version >= (10, 4, 0)):
        return (
            f"lock: backup_stage needs MariaDB 10.4 or later, this is {shown}; "
            "use lock: instance_lock (MySQL 8.0+) or ftwrl"
        )
    if lock == "instance_lock" and not (flavor == "mysql" and version >= (8, 0, 0)):
        hint = "backup_stage" if flavor == "mariadb" and version >= (10, 4, 0) else "ftwrl"
        return (
            f"lock: instance_lock (LOCK INSTANCE FOR BACKUP) needs MySQL 8.0 or later, "
            f"this is {shown}; use lock: {hint}"
        )
    return None


def mask(query: str | None) -> str:
    """A statement's head with string literals masked (they may hold secrets)."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "'?'", query or "")
    text = " ".join(text.split())
    return text[:60] + ("..." if len(text) > 60 else "")
