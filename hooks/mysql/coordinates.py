"""Where the binary log stands while the lock is held: file, position and GTID set.

The statements run on the writer's held session through ``run(step, sql, bound)``, the
writer's bounded statement (server-side lock_wait_timeout and the KILL watchdog), so this
module holds only which statement each server needs and how to read its answer.

Raises: whatever ``run`` raises (WriterError and its subclasses).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Run = Callable[[str, str, float], list[tuple[Any, ...]]]  # (step, sql, bound) -> rows


def read(
    run: Run, strategy: str, flavor: str, version: tuple[int, int, int], bound: float
) -> dict[str, Any]:
    """Binary log file / position and GTID set, read while the lock is held."""
    if strategy == "instance_lock":
        return _log_status(run, bound)
    out: dict[str, Any] = {
        "binlog_file": None,
        "binlog_position": None,
        "gtid": None,
        "coordinates_exact": True,
    }
    if flavor == "mysql" and version >= (8, 2, 0):
        status = run("SHOW BINARY LOG STATUS", "SHOW BINARY LOG STATUS", bound)
    else:
        status = run("SHOW MASTER STATUS", "SHOW MASTER STATUS", bound)
    if status:
        out["binlog_file"], out["binlog_position"] = str(status[0][0]), int(status[0][1])
    var = "@@gtid_binlog_pos" if flavor == "mariadb" else "@@gtid_executed"
    has_gtid = version >= ((10, 0, 2) if flavor == "mariadb" else (5, 6, 5))
    if has_gtid:  # older servers have no GTIDs at all
        rows = run("reading the GTID set", f"SELECT {var}", bound)
        out["gtid"], out["gtid_variable"] = str(rows[0][0] or ""), var
    return out


def _log_status(run: Run, bound: float) -> dict[str, Any]:
    """MySQL 8: LOCK INSTANCE FOR BACKUP lets commits through, so the coordinates are a
    point inside the window, read atomically from performance_schema.log_status."""
    rows = run(
        "reading performance_schema.log_status",
        "SELECT LOCAL FROM performance_schema.log_status",
        bound,
    )
    local = _parse_local(rows[0][0] if rows else None)  # flat keys, as MySQL documents it
    return {
        "binlog_file": local.get("binary_log_file"),
        "binlog_position": local.get("binary_log_position"),
        "gtid": local.get("gtid_executed"),
        "gtid_variable": "@@gtid_executed",
        "coordinates_exact": False,
    }


def _parse_local(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}
