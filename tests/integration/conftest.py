"""Session-scoped database servers for the integration tests (see tests/dbservers.py).

One PostgreSQL (WAL archiving on) and one MariaDB (binary log on) serve the whole session;
tests that restart, kill or freeze a server make a private one with ``pg_factory`` /
``maria_factory``. Missing servers skip, or fail under QUIESCE_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers.dbservers import (
    MYSQL_ENV,
    PG_ENV,
    ExternalMaria,
    ExternalPg,
    MariaServer,
    PgServer,
    mariadbd_path,
    pg_bindir,
    remove_templates,
)
from tests.helpers.env import need


def _need_pg() -> None:
    need(
        pg_bindir() is not None,
        f"PostgreSQL is not installed (scripts/setup installs it) and {PG_ENV} is not set",
    )


def _need_maria() -> None:
    need(
        mariadbd_path() is not None,
        f"MariaDB is not installed (scripts/setup installs it) and {MYSQL_ENV} is not set",
    )


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """The session's PostgreSQL: private (archiving on) or $QUIESCE_TEST_PG_DSN."""
    if os.environ.get(PG_ENV):
        yield ExternalPg(os.environ[PG_ENV])
        return
    _need_pg()
    server = PgServer(archive=True).start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def maria() -> Iterator[MariaServer]:
    """The session's MariaDB: private (binary log on) or $QUIESCE_TEST_MYSQL_SOCKET."""
    if os.environ.get(MYSQL_ENV):
        yield ExternalMaria(os.environ[MYSQL_ENV])
        return
    _need_maria()
    server = MariaServer(binlog=True).start()
    yield server
    server.remove()


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., PgServer]]:
    """Private PostgreSQL servers for tests that restart, kill or freeze them."""
    _need_pg()
    made: list[PgServer] = []

    def make(**kw: Any) -> PgServer:
        server = PgServer(**kw)
        made.append(server)
        return server

    yield make
    for server in reversed(made):
        server.remove()


@pytest.fixture
def maria_factory() -> Iterator[Callable[..., MariaServer]]:
    """Private MariaDB servers for tests that kill or freeze them."""
    _need_maria()
    made: list[MariaServer] = []

    def make(**kw: Any) -> MariaServer:
        server = MariaServer(**kw)
        made.append(server)
        return server

    yield make
    for server in reversed(made):
        server.remove()


@pytest.fixture(scope="session", autouse=True)
def _templates() -> Iterator[None]:
    yield
    remove_templates()
