"""The MySQL / MariaDB writer's settings: one ``mysql[]`` entry of the configuration.

The defaults below are the documented defaults (docs/databases.md) and the one place they are
written: agent/config.py validates into this class and takes its defaults from it. This
module imports nothing but the standard library, so loading the configuration (the client
CLI does, to find the socket) never loads pymysql.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCKS = ("auto", "ftwrl", "backup_stage", "instance_lock")  # the values ``lock`` may take


@dataclass(frozen=True)
class MysqlSettings:
    """One MySQL or MariaDB server."""

    name: str
    unix_socket: str | None = "/run/mysqld/mysqld.sock"  # None: connect to host:port
    host: str | None = None
    port: int = 3306
    user: str = "root"
    password_file: str | None = None  # its first line is the password
    lock: str = "auto"  # one of LOCKS
    connect_timeout: float = 5.0  # seconds
    lock_wait_timeout: float = 5.0  # bound for each lock statement (server-side + watchdog)
    long_query_wait: float = 5.0  # wait this long for long statements before locking
    long_query_threshold: float = 1.0  # a statement running longer than this is "long"
    kill_long_queries: bool = False  # kill them instead of failing the freeze
