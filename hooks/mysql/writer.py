"""The MySQL / MariaDB writer: a backup lock held on a dedicated session (pymysql).

Lock strategies (``lock:``), see docs/databases.md for what each blocks:

    ftwrl          prepare: wait out long statements, FLUSH NO_WRITE_TO_BINLOG TABLES
                   freeze:  FLUSH TABLES WITH READ LOCK              thaw: UNLOCK TABLES
    backup_stage   MariaDB 10.4+; prepare: BACKUP STAGE START, BACKUP STAGE FLUSH
                   freeze:  BACKUP STAGE BLOCK_DDL, BLOCK_COMMIT     thaw: BACKUP STAGE END
    instance_lock  MySQL 8.0+; freeze: LOCK INSTANCE FOR BACKUP, coordinates from
                   performance_schema.log_status                     thaw: UNLOCK INSTANCE

Prepare does what blocks no client (START only waits for running DDL, FLUSH closes unused
non-transactional tables); the freeze takes only the stages that can block one. BLOCK_DDL
stays there: it blocks DDL, and measured here it takes 0.1-0.2 ms under load, so moving it to
prepare would block DDL clients for the whole prepare to save nothing.
    auto           MariaDB 10.4+: backup_stage; MySQL 8.0+: instance_lock; anything else, or
                   any non-transactional user table (MyISAM, Aria, ...): ftwrl

The lock lives in the session: a daemon that dies takes it along. Each lock statement is
bounded server-side by lock_wait_timeout and, since a client-side timeout does not cancel a
waiting FLUSH, by a watchdog that KILLs it from a second (control) session. Binary log file,
position and GTID set are read while the lock is held (coordinates.py). Which strategy
``auto`` picks is strategy.py's; what a failed statement means, failures.py's.

Raises: WriterUnavailable (cannot connect, wrong server for the strategy, missing privilege),
WriterTimeout (a lock wait ran out), WriterError (long statements, lost session, ...).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from typing import Any

import pymysql
from pymysql.connections import Connection

from hooks.base import Operation, Stage, Writer
from hooks.errors import WriterError, WriterUnavailable
from hooks.mysql import coordinates
from hooks.mysql.failures import ER_ACCESS_DENIED, classify, message
from hooks.mysql.settings import MysqlSettings
from hooks.mysql.strategy import choose_lock, mask, parse_version, refuse_lock

GRACE = 1.0  # the watchdog kills a statement this long after its server-side bound
POLL = 0.1
NON_TRANSACTIONAL = ("MyISAM", "Aria", "MRG_MyISAM", "MRG_MYISAM", "CSV", "ARCHIVE")
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
PREPARE_STAGES = ("START", "FLUSH")  # block no client
LOCK_STAGES = ("BLOCK_DDL", "BLOCK_COMMIT")  # block DDL, then commits
UNLOCK = {
    "ftwrl": "UNLOCK TABLES",
    "backup_stage": "BACKUP STAGE END",
    "instance_lock": "UNLOCK INSTANCE",
}


class MysqlWriter(Writer):
    """One MySQL or MariaDB server."""

    kind = "mysql"
    stage = Stage.MYSQL

    def __init__(self, settings: MysqlSettings) -> None:
        super().__init__(settings.name)
        self.settings = settings
        self._held: Connection[Any] | None = None
        self._ctl: Connection[Any] | None = None
        self._ctl_lock = threading.Lock()
        self._held_id = 0
        self._cut = False
        self._killed_by_watchdog = False
        self._locked = False
        self.flavor, self.version = "mysql", (0, 0, 0)
        self.strategy, self.reason = settings.lock, "configured"
        self._prepared_at = 0.0
        self._artifacts: dict[str, Any] = {}
        self._ms: dict[str, float] = {}  # lock_ms (taking the lock), release_ms (unlock)

    # -- connections ------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return (
            self.settings.unix_socket
            if self.settings.unix_socket
            else f"{self.settings.host}:{self.settings.port}"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "user": self.settings.user,
            "lock": self.settings.lock,
            "kill_long_queries": self.settings.kill_long_queries,
        }

    def _password(self) -> str:
        if not self.settings.password_file:
            return ""
        try:
            with open(self.settings.password_file) as f:
                return f.read().rstrip("\r\n")
        except OSError as err:
            raise WriterUnavailable(
                self.qualified_name,
                f"cannot read mysql[].password_file {self.settings.password_file}: {err.strerror}",
            ) from err

    def _connect(self, budget: float, read_timeout: float | None = None) -> Connection[Any]:
        kw: dict[str, Any] = (
            {"unix_socket": self.settings.unix_socket}
            if self.settings.unix_socket
            else {"host": self.settings.host, "port": self.settings.port}
        )
        try:
            return pymysql.connect(
                user=self.settings.user,
                password=self._password(),
                autocommit=True,
                connect_timeout=max(0.5, min(self.settings.connect_timeout, budget)),
                read_timeout=read_timeout,
                program_name="quiesce-agent",
                **kw,
            )
        except pymysql.MySQLError as err:
            code = err.args[0] if err.args else 0
            hint = (
                "check mysql[].user and password_file"
                if code == ER_ACCESS_DENIED
                else "check that the server is running and mysql[].unix_socket / host"
            )
            raise WriterUnavailable(
                self.qualified_name, f"cannot connect to {self.where}: {message(err)}; {hint}"
            ) from err

    def _ctl_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """A statement on the control session (processlist, KILL)."""
        with self._ctl_lock:
            if self._ctl is None:
                self._ctl = self._connect(
                    self.settings.connect_timeout, read_timeout=self.settings.lock_wait_timeout + 10
                )
            try:
                with self._ctl.cursor() as cur:
                    cur.execute(sql, args)
                    return list(cur.fetchall())
            except pymysql.MySQLError as err:
                self._close_ctl_locked()
                raise WriterError(self.qualified_name, f"control session: {message(err)}") from err

    def _close_ctl_locked(self) -> None:
        conn, self._ctl = self._ctl, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def _kill_held(self, what: str = "QUERY") -> None:
        """KILL [QUERY] the held session from the control session (the watchdog)."""
        if not self._held_id:
            return
        if what == "QUERY":
            self._killed_by_watchdog = True
        try:
            self._ctl_query(f"KILL {what} {int(self._held_id)}")
        except WriterError:
            pass

    def _exec(self, step: str, sql: str, timeout: float) -> list[tuple[Any, ...]]:
        """Run ``sql`` on the held session; the watchdog KILLs it after ``timeout`` + GRACE."""
        conn = self._held
        if conn is None:
            raise WriterError(self.qualified_name, f"{step}: the held session is gone")
        self._killed_by_watchdog = False
        timer = threading.Timer(timeout + GRACE, self._kill_held)
        timer.daemon = True
        timer.start()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        except pymysql.MySQLError as err:
            raise classify(
                err,
                step,
                timeout,
                writer=self.qualified_name,
                where=self.where,
                user=self.settings.user,
                flavor=self.flavor,
                watchdog_killed=self._killed_by_watchdog,
                cut=self._cut,
            ) from err
        finally:
            timer.cancel()

    def _close_held(self) -> None:
        conn, self._held = self._held, None
        self._held_id = 0
        self._locked = False
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def _close(self) -> None:
        self._close_held()
        with self._ctl_lock:
            self._close_ctl_locked()

    # -- server facts -------------------------------------------------------------------------

    def _read_facts(self, timeout: float) -> None:
        rows = self._exec("reading the version", "SELECT VERSION(), @@log_bin", timeout)
        self.flavor, self.version = parse_version(str(rows[0][0]))
        self.binlog = bool(rows[0][1])
        self.strategy, self.reason = self.settings.lock, "configured"
        refusal = refuse_lock(self.settings.lock, self.flavor, self.version)
        if refusal:
            raise WriterUnavailable(self.qualified_name, refusal)
        if self.settings.lock in ("auto", "instance_lock", "backup_stage"):
            engines = self._non_transactional(timeout)
            if self.settings.lock == "auto":
                self.strategy, self.reason = choose_lock(self.flavor, self.version, engines)
            elif engines:
                self.reason = (
                    f"configured, although non-transactional user tables exist "
                    f"({', '.join(sorted(engines))}): their writes are not held"
                )

    def _non_transactional(self, timeout: float) -> dict[str, int]:
        engines = ", ".join(f"'{e}'" for e in NON_TRANSACTIONAL)
        schemas = ", ".join(f"'{s}'" for s in SYSTEM_SCHEMAS)
        rows = self._exec(
            "listing table engines",
            (
                "SELECT ENGINE, COUNT(*) FROM information_schema.TABLES "
                f"WHERE TABLE_TYPE = 'BASE TABLE' AND ENGINE IN ({engines}) "
                f"AND TABLE_SCHEMA NOT IN ({schemas}) GROUP BY ENGINE"
            ),
            timeout,
        )
        return {str(e): int(n) for e, n in rows}

    # -- the Writer interface -------------------------------------------------------------------

    def check(self) -> list[str]:
        self._open(self.settings.connect_timeout)
        try:
            self._read_facts(self.settings.lock_wait_timeout)
        finally:
            self._close()
        shown = (
            f"{'MariaDB' if self.flavor == 'mariadb' else 'MySQL'} "
            f"{'.'.join(map(str, self.version))}"
        )
        return [
            f"{self.where}: {shown}, lock {self.strategy} ({self.reason}), binary log "
            f"{'on' if self.binlog else 'off'}"
        ]

    def _open(self, budget: float) -> None:
        self._close()
        self._cut = False
        self._held = self._connect(budget)
        self._held_id = int(self._held.thread_id())  # type: ignore[no-untyped-call]
        lwt = max(1, math.ceil(self.settings.lock_wait_timeout))
        # the held session must survive an idle freeze window of up to the ceiling
        self._exec(
            "session settings",
            f"SET SESSION lock_wait_timeout = {lwt}, SESSION wait_timeout = 3600",
            self.settings.lock_wait_timeout,
        )

    def prepare(self, op: Operation) -> None:
        self._artifacts, self._ms, self._locked = {}, {}, False
        self._prepared_at = time.monotonic()
        self._open(op.time_left(self.qualified_name, "connect"))
        try:
            self._read_facts(min(self.settings.lock_wait_timeout, op.deadline.remaining()))
            op.log(self.qualified_name, f"lock {self.strategy}: {self.reason}")
            if self.strategy == "ftwrl":
                self._clear_long_queries(op, self.settings.long_query_wait)
                t0 = time.monotonic()
                self._bounded(
                    op, "FLUSH NO_WRITE_TO_BINLOG TABLES", "FLUSH NO_WRITE_TO_BINLOG TABLES"
                )
                op.log(self.qualified_name, f"FLUSH TABLES in {time.monotonic() - t0:.3f} s")
            elif self.strategy == "backup_stage":
                t0 = time.monotonic()
                self._locked = True  # from START on, thaw/abort must end the backup stage
                for stage in PREPARE_STAGES:
                    self._bounded(op, f"BACKUP STAGE {stage}", f"BACKUP STAGE {stage}")
                op.log(
                    self.qualified_name,
                    f"BACKUP STAGE START, FLUSH in {time.monotonic() - t0:.3f} s",
                )
        except WriterError:
            self._close()
            raise

    def _bounded(self, op: Operation, step: str, sql: str) -> list[tuple[Any, ...]]:
        """A lock statement: session lock_wait_timeout, and the watchdog, within the budget."""
        left = op.time_left(self.qualified_name, step)
        bound = min(self.settings.lock_wait_timeout, left)
        if bound < self.settings.lock_wait_timeout:
            self._exec(
                "lock_wait_timeout",
                f"SET SESSION lock_wait_timeout = {max(1, math.ceil(bound))}",
                bound,
            )
        return self._exec(step, sql, bound)

    def _long_queries(self) -> list[tuple[Any, ...]]:
        ms = "TIME_MS / 1000" if self.flavor == "mariadb" else "TIME"
        ctl = self._ctl.thread_id() if self._ctl else 0  # type: ignore[no-untyped-call]
        mine = f"{int(self._held_id)}, {int(ctl)}"
        return self._ctl_query(
            f"SELECT ID, USER, {ms}, INFO FROM information_schema.PROCESSLIST "
            "WHERE COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump', 'Binlog Dump GTID', "
            "'Killed', 'Slave_IO', 'Slave_SQL', 'Slave_worker') AND INFO IS NOT NULL "
            f"AND USER NOT IN ('system user', 'event_scheduler') AND ID NOT IN ({mine}) "
            f"AND {ms} >= %s",
            [self.settings.long_query_threshold],
        )

    def _clear_long_queries(self, op: Operation, wait: float) -> None:
        """Statements running longer than the threshold would make FTWRL stall every client
        behind them: wait up to ``wait`` s for them, then kill them or fail."""
        end = time.monotonic() + max(0.0, min(wait, op.deadline.remaining()))
        long = self._long_queries()
        if long:
            op.log(
                self.qualified_name,
                f"waiting up to {end - time.monotonic():.1f} s for "
                f"{len(long)} long statement(s) before FLUSH TABLES WITH READ LOCK",
            )
        while long and time.monotonic() < end:
            time.sleep(POLL)
            long = self._long_queries()
        if not long:
            return
        listing = "; ".join(
            f"id {i} user {u} running {float(t):.0f} s: {mask(q)}" for i, u, t, q in long[:5]
        )
        if not self.settings.kill_long_queries:
            raise WriterError(
                self.qualified_name,
                (
                    f"{len(long)} statement(s) still running after waiting {wait:.1f} s would "
                    f"make FLUSH TABLES WITH READ LOCK stall every client ({listing}); retry "
                    "later, set mysql[].kill_long_queries: true, or use lock: backup_stage / "
                    "instance_lock"
                ),
            )
        for row in long:
            self._ctl_query(f"KILL QUERY {int(row[0])}")
        op.log(self.qualified_name, f"killed {len(long)} long statement(s): {listing}")
        end = time.monotonic() + min(2.0, op.deadline.remaining())
        while self._long_queries() and time.monotonic() < end:
            time.sleep(POLL)

    def freeze(self, op: Operation) -> None:
        if self._held is None:
            raise WriterError(self.qualified_name, "freeze without prepare: no held session")
        t0 = time.monotonic()
        try:
            if self.strategy == "ftwrl":
                left = self.settings.long_query_wait - (time.monotonic() - self._prepared_at)
                self._clear_long_queries(op, max(0.0, left))
                self._locked = True  # from here on, thaw/abort must unlock
                self._bounded(op, "FLUSH TABLES WITH READ LOCK", "FLUSH TABLES WITH READ LOCK")
            elif self.strategy == "backup_stage":
                self._locked = True
                for stage in LOCK_STAGES:
                    self._bounded(op, f"BACKUP STAGE {stage}", f"BACKUP STAGE {stage}")
            else:
                self._locked = True
                self._bounded(op, "LOCK INSTANCE FOR BACKUP", "LOCK INSTANCE FOR BACKUP")
            locked_in = time.monotonic() - t0
            self._ms["lock_ms"] = round(locked_in * 1000, 1)
            self._artifacts = self._coordinates(op)
        except WriterError:
            self._release_by_kill()
            raise
        self._artifacts.update(
            lock=self.strategy,
            lock_reason=self.reason,
            server=f"{self.flavor} {'.'.join(map(str, self.version))}",
        )
        op.log(
            self.qualified_name,
            f"{self.strategy} held after {locked_in:.3f} s; binlog "
            f"{self._artifacts.get('binlog_file')}:{self._artifacts.get('binlog_position')}",
        )

    def _coordinates(self, op: Operation) -> dict[str, Any]:
        """Binary log file / position and GTID set, read while the lock is held."""
        bound = max(1.0, min(self.settings.lock_wait_timeout, op.deadline.remaining()))
        return coordinates.read(self._exec, self.strategy, self.flavor, self.version, bound)

    def _release_by_kill(self) -> None:
        """End the held session for sure: KILL it server-side, then close our end."""
        if self._held_id:
            self._kill_held("CONNECTION")
        self._close_held()

    def thaw(self, op: Operation) -> None:
        if not self._locked:
            self._close()
            return
        sql = UNLOCK[self.strategy]
        t0 = time.monotonic()
        try:
            self._exec(sql, sql, self.settings.lock_wait_timeout)
            self._ms["release_ms"] = round((time.monotonic() - t0) * 1000, 1)
            op.log(self.qualified_name, f"{sql}: released")
        except WriterError as err:
            self._release_by_kill()
            raise WriterError(
                self.qualified_name,
                f"{err}; the session was closed, which "
                "released the lock, but the snapshot may not be consistent",
            ) from err
        finally:
            self._close()

    def abort(self, op: Operation) -> None:
        if self._held is not None:
            op.log(self.qualified_name, "abort: killing the held session (releases the lock)")
        self._release_by_kill()
        self._close()

    def artifacts(self) -> dict[str, Any]:
        out = dict(self._artifacts)
        if self._ms:
            out["timings"] = dict(self._ms)
        return out

    def emergency_release(self) -> None:
        """Cut the held socket now; KILL the server-side session from a helper thread (a
        session waiting for a lock does not notice its client going away)."""
        conn, held_id = self._held, self._held_id
        self._cut = True
        if conn is None:
            return
        try:
            sock = getattr(conn, "_sock", None)  # pymysql has no public handle on it
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # noqa: BLE001 - never raise from the ceiling path
            pass
        if held_id:
            threading.Thread(
                target=self._kill_quietly,
                args=(held_id,),
                daemon=True,
                name=f"{self.qualified_name}-kill",
            ).start()

    def _kill_quietly(self, held_id: int) -> None:
        try:
            conn = self._connect(min(2.0, self.settings.connect_timeout), read_timeout=5)
            try:
                with conn.cursor() as cur:
                    cur.execute(f"KILL CONNECTION {int(held_id)}")
            finally:
                conn.close()
        except Exception:  # noqa: BLE001 - the socket is already cut; best effort
            pass
