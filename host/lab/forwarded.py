"""The VM lab guest's databases as the host reaches them: QEMU user networking forwards a
127.0.0.1 port to each server in the guest (``hostfwd``), so the insert load runs on the host
and its sends and acknowledgements are timed on the host's clock, the clock of the snapshot's
moments.

``ForwardedPostgres`` and ``ForwardedMaria`` offer what the load and the verdict use of the
local lab's servers (host.lab.databases): ``connect()`` and ``sql()``; and ``ready()``, which
says whether the server answers yet (the guest's boot waits on it).
"""

from __future__ import annotations

import socket
from typing import Any

import psycopg
import pymysql

from host.lab.databases import LabError, MariaStatements, PgStatements
from host.lab.guest_recipe import LAB_MYSQL_USER

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def check_free(port: int, what: str) -> None:
    """LabError naming ``what`` when 127.0.0.1:``port`` cannot be bound (in use)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError as err:
            raise LabError(
                f"port {LOOPBACK}:{port} ({what}) cannot be used: {err.strerror}; another "
                "program holds it: free it, or choose another port"
            ) from err


class ForwardedPostgres(PgStatements):
    """The guest's PostgreSQL through 127.0.0.1:``port``, as its superuser ``postgres``."""

    name = "PostgreSQL"

    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def dsn(self) -> str:
        return f"host={LOOPBACK} port={self.port} user=postgres dbname=postgres"

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        kw.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn, autocommit=True, **kw)

    def ready(self) -> str | None:
        """None once it answers a query; else why not (the last error)."""
        try:
            self.connect(connect_timeout=3).close()
        except psycopg.Error as err:
            return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None


class ForwardedMaria(MariaStatements):
    """The guest's MariaDB through 127.0.0.1:``port``, as the lab's account."""

    name = "MariaDB"

    def __init__(self, port: int) -> None:
        self.port = port

    def connect(self, **kw: Any) -> pymysql.connections.Connection[Any]:
        kw.setdefault("connect_timeout", 10)
        return pymysql.connect(
            host=LOOPBACK, port=self.port, user=LAB_MYSQL_USER, autocommit=True, **kw
        )

    def ready(self) -> str | None:
        """None once it answers a query; else why not (the last error)."""
        try:
            self.sql("SELECT 1")
        except pymysql.err.MySQLError as err:
            return str(err)
        return None
