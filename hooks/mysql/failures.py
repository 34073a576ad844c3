"""What a failed statement means: a pymysql error turned into the writer error a sysadmin
can act on. A lock that was not granted in time names SHOW PROCESSLIST and the key to raise,
a missing privilege names the grants, a lost session says the lock went with it.

Pure: the writer passes in what it knows of the moment (whether its watchdog KILLed the
statement, whether the ceiling guard cut the socket).
"""

from __future__ import annotations

from typing import Any

import pymysql

from hooks.errors import WriterError, WriterTimeout, WriterUnavailable

LOCK_STEPS = ("FLUSH", "BACKUP STAGE", "LOCK INSTANCE")  # statements that wait for a lock
# server error codes
ER_ACCESS_DENIED, ER_SPECIFIC_ACCESS = 1045, 1227
ER_LOCK_WAIT_TIMEOUT, ER_QUERY_INTERRUPTED, ER_STATEMENT_TIMEOUT = 1205, 1317, 1969
CR_LOST = (2006, 2013, 2014, 2055)


def classify(
    err: pymysql.MySQLError,
    step: str,
    timeout: float,
    *,
    writer: str,
    where: str,
    user: str,
    flavor: str,
    watchdog_killed: bool,
    cut: bool,
) -> WriterError:
    """The writer error for ``err``, raised by ``step`` (bounded by ``timeout`` seconds) on
    the server ``where``, as the agent's ``user``."""
    code = err.args[0] if err.args else 0
    timed_out = code in (ER_LOCK_WAIT_TIMEOUT, ER_STATEMENT_TIMEOUT) or (
        code == ER_QUERY_INTERRUPTED and watchdog_killed
    )
    if timed_out and not step.startswith(LOCK_STEPS):
        return WriterTimeout(
            writer,
            f"{step} did not finish within "
            f"{timeout:.1f} s ({message(err)}); the server is overloaded or "
            "stuck: check SHOW PROCESSLIST",
        )
    if timed_out:
        return WriterTimeout(
            writer,
            (
                f"{step} did not get its lock within {timeout:.0f} s ({message(err)}); find the "
                "blocker in SHOW PROCESSLIST (a long query, another backup holding BACKUP "
                "STAGE, an open LOCK TABLES) or raise mysql[].lock_wait_timeout"
            ),
        )
    if code == ER_SPECIFIC_ACCESS:
        need = (
            "RELOAD, PROCESS, BINLOG MONITOR"
            if flavor == "mariadb"
            else "RELOAD, PROCESS, REPLICATION CLIENT, BACKUP_ADMIN"
        )
        return WriterUnavailable(
            writer,
            f"{step}: {message(err)}; the agent's user {user} needs {need}",
        )
    if cut or isinstance(err, pymysql.err.InterfaceError) or code in CR_LOST:
        return WriterError(
            writer,
            (
                f"{step}: the session to {where} was lost ({message(err)}); the server "
                "restarted, the session was killed, or the ceiling guard released it. The "
                "lock went with the session"
            ),
        )
    return WriterError(writer, f"{step} failed: {message(err)}")


def message(err: BaseException) -> str:
    """The server's message and code, as ``Lock wait timeout exceeded (1205)``."""
    args: tuple[Any, ...] = tuple(getattr(err, "args", ()))
    if len(args) >= 2:
        return f"{args[1]} ({args[0]})"
    return str(err) or type(err).__name__
