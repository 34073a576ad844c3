"""The PostgreSQL writer's settings: one ``postgres[]`` entry of the configuration.

The defaults below are the documented defaults (docs/databases.md) and the one place they are
written: agent/config.py validates into this class and takes its defaults from it. This
module imports nothing but the standard library, so loading the configuration (the client
CLI does, to find the socket) never loads psycopg.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PostgresSettings:
    """One PostgreSQL cluster (primary or standby)."""

    name: str
    dsn: str  # libpq conninfo; never shown whole (it may hold a password)
    connect_timeout: float = 5.0  # seconds
    statement_timeout: float = 10.0  # bound for CHECKPOINT, pg_backup_start, pg_backup_stop
    wait_for_archive: bool = True  # after pg_backup_stop, wait for the last WAL segment
    archive_timeout: float = 15.0  # ... at most this long (agent/config.py bounds the sum)
    artifacts_dir: str | None = None  # backup_label etc. in a folder per snapshot, if set
