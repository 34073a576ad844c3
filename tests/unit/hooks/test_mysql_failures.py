"""What a sysadmin reads when a MySQL/MariaDB statement fails: the cause, and what to do."""

from __future__ import annotations

from typing import Any

import pymysql

from hooks.errors import WriterError, WriterTimeout, WriterUnavailable
from hooks.mysql.failures import classify, message

LOCK_WAIT = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")


def fail(err: pymysql.MySQLError, step: str = "FLUSH TABLES WITH READ LOCK", **kw: Any) -> Any:
    moment: dict[str, Any] = {
        "writer": "mysql:main",
        "where": "/run/mysqld/mysqld.sock",
        "user": "backup",
        "flavor": "mariadb",
        "watchdog_killed": False,
        "cut": False,
    }
    moment.update(kw)
    return classify(err, step, 5.0, **moment)


def test_a_lock_not_granted_in_time_names_the_blocker_to_look_for_and_the_key() -> None:
    err = fail(LOCK_WAIT, "BACKUP STAGE BLOCK_COMMIT")
    assert isinstance(err, WriterTimeout) and err.writer == "mysql:main"
    assert str(err) == (
        "mysql:main: BACKUP STAGE BLOCK_COMMIT did not get its lock within 5 s (Lock wait "
        "timeout exceeded (1205)); find the blocker in SHOW PROCESSLIST (a long query, another "
        "backup holding BACKUP STAGE, an open LOCK TABLES) or raise mysql[].lock_wait_timeout"
    )


def test_any_other_statement_past_its_bound_is_an_overloaded_server() -> None:
    err = fail(pymysql.err.OperationalError(1969, "Query execution was interrupted"), "SELECT 1")
    assert isinstance(err, WriterTimeout)
    assert "SELECT 1 did not finish within 5.0 s" in str(err)
    assert "overloaded or stuck: check SHOW PROCESSLIST" in str(err)


def test_an_interrupted_lock_is_a_timeout_only_when_our_watchdog_killed_it() -> None:
    killed = pymysql.err.OperationalError(1317, "Query execution was interrupted")
    assert isinstance(fail(killed, watchdog_killed=True), WriterTimeout)
    other = fail(killed, watchdog_killed=False)  # someone else's KILL QUERY
    assert type(other) is WriterError
    assert str(other).endswith(
        "FLUSH TABLES WITH READ LOCK failed: Query execution was interrupted (1317)"
    )


def test_a_missing_privilege_names_the_grants_each_flavour_needs() -> None:
    denied = pymysql.err.OperationalError(1227, "Access denied; you need RELOAD")
    maria, mysql = fail(denied, flavor="mariadb"), fail(denied, flavor="mysql")
    assert isinstance(maria, WriterUnavailable) and isinstance(mysql, WriterUnavailable)
    assert str(maria).endswith("the agent's user backup needs RELOAD, PROCESS, BINLOG MONITOR")
    assert "REPLICATION CLIENT, BACKUP_ADMIN" in str(mysql)


def test_a_lost_session_says_the_lock_went_with_it() -> None:
    for err, cut in [
        (pymysql.err.OperationalError(2013, "Lost connection to server during query"), False),
        (pymysql.err.InterfaceError(0, ""), False),
        # the ceiling guard cut the socket: pymysql's complaint about it does not matter
        (pymysql.err.OperationalError(1105, "Unknown error"), True),
    ]:
        got = fail(err, "UNLOCK TABLES", cut=cut)
        assert type(got) is WriterError
        assert "UNLOCK TABLES: the session to /run/mysqld/mysqld.sock was lost" in str(got)
        assert str(got).endswith("The lock went with the session")


def test_the_server_message_carries_its_code() -> None:
    assert message(LOCK_WAIT) == "Lock wait timeout exceeded (1205)"
    assert message(pymysql.err.InterfaceError()) == "InterfaceError"
