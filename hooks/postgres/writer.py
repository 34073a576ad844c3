"""The PostgreSQL writer: non-exclusive backup mode held on a dedicated session (psycopg 3).

    prepare  open the held session (autocommit; idle timeouts off; TCP keepalives), CHECKPOINT,
             then start backup mode on it:
             pg_backup_start(label, true)               PostgreSQL 15+
             pg_start_backup(label, true, false)        9.6 - 14
    freeze   nothing: backup mode blocks no client, and the filesystems' freeze is what
             holds PostgreSQL's writes still (it only checks that the backup is running)
    thaw     nothing
    finish   (after every lock of the cycle is released) pg_backup_stop(false) /
             pg_stop_backup(false[, false]) on the same session, then, when WAL archiving is
             on and wait_for_archive is set, wait (bounded by archive_timeout) until
             pg_stat_archiver shows the last WAL segment archived; write backup_label /
             tablespace_map / backup_info.json to artifacts_dir (artifacts.py; the WAL
             segments the backup needs come from wal.py)
    abort    close the session: the server aborts backup mode when the backend exits

Backup mode lives only as long as the session (PostgreSQL 15 has no exclusive mode), so the
connection is opened in prepare and held until finish. Backup mode only has to begin before
the snapshot; nothing in it blocks a client, so it begins in prepare and ends after every
lock is released, outside the window clients wait in. Non-exclusive mode writes no
backup_label into the data directory, so an atomic snapshot of every volume restores by plain
crash recovery; the label returned at finish is for restores that replay the WAL archive
(docs/databases.md).

Every statement is bounded twice: server-side by statement_timeout, client-side by a timer
that shuts the socket down if the server does not answer at all. ``emergency_release()``
shuts the socket down, which makes the backend exit and end backup mode.

Raises: WriterUnavailable (cannot connect, server too old, not allowed), WriterTimeout (a
statement ran past its bound), WriterError (anything else, always naming the step).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg.conninfo import conninfo_to_dict

from hooks.base import Operation, Stage, Writer
from hooks.errors import WriterError, WriterTimeout, WriterUnavailable
from hooks.postgres.artifacts import label_folder, write_label_files
from hooks.postgres.settings import PostgresSettings
from hooks.postgres.wal import backup_wal, parse_size

CLIENT_GRACE = 2.0  # seconds the client waits past statement_timeout before cutting the socket
ARCHIVE_POLL = 0.1
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class PostgresWriter(Writer):
    """One PostgreSQL cluster (primary or standby)."""

    kind = "postgres"
    stage = Stage.POSTGRES

    def __init__(self, settings: PostgresSettings) -> None:
        super().__init__(settings.name)
        self.settings = settings
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._cut = False  # the socket was shut down (emergency or a client-side timeout)
        self._started = False
        self._reset_facts()

    # -- facts -----------------------------------------------------------------------------

    def _reset_facts(self) -> None:
        self.version = 0
        self.standby = False
        self.archiving = False
        self.seg_size = 16 << 20
        self.start_lsn: str | None = None
        self._artifacts: dict[str, Any] = {}
        self._ms: dict[str, float] = {}  # start_ms, stop_ms (backup mode), archive_wait_ms

    @property
    def where(self) -> str:
        """Host (or socket dir), port and database from the DSN; never the password."""
        try:
            info = conninfo_to_dict(self.settings.dsn)
        except psycopg.ProgrammingError:
            return "(unparsable dsn)"
        host = info.get("host") or info.get("hostaddr") or "default socket"
        return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"

    def describe(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "wait_for_archive": self.settings.wait_for_archive,
            "artifacts_dir": self.settings.artifacts_dir,
        }

    # -- connection and bounded statements ----------------------------------------------------

    def _connect(self, budget: float) -> psycopg.Connection[Any]:
        timeout = max(2, int(min(self.settings.connect_timeout, max(budget, 0.0)) + 0.999))
        try:
            conn = psycopg.connect(
                self.settings.dsn,
                autocommit=True,
                connect_timeout=timeout,
                application_name="quiesce-agent",
                **KEEPALIVES,
            )
        except psycopg.Error as err:
            raise WriterUnavailable(
                self.qualified_name,
                f"cannot connect to {self.where}: {_first_line(err)}; check that the server "
                "is running and postgres[].dsn",
            ) from err
        return conn

    def _cut_socket(self) -> None:
        """Shut the held session's socket down (thread-safe, never blocks, never raises)."""
        conn = self._conn
        if conn is None:
            return
        self._cut = True
        try:
            fd = os.dup(conn.pgconn.socket)
        except Exception:  # noqa: BLE001 - already closed
            return
        try:
            s = socket.socket(fileno=fd)
            try:
                s.shutdown(socket.SHUT_RDWR)
            finally:
                s.close()
        except OSError:
            pass

    def _exec(self, step: str, sql: str, params: Any, timeout: float) -> list[tuple[Any, ...]]:
        """Run ``sql`` on the held session, bounded by ``timeout`` seconds on both sides."""
        conn = self._conn
        if conn is None or conn.closed:
            raise WriterError(self.qualified_name, f"{step}: the held session is gone")
        ms = max(1, int(timeout * 1000))
        timer = threading.Timer(timeout + CLIENT_GRACE, self._cut_socket)
        timer.daemon = True
        timer.start()
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", [f"{ms}ms"])
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []
        except pgerr.QueryCanceled as err:
            raise WriterTimeout(
                self.qualified_name,
                f"{step} timed out after {timeout:.1f} s (statement_timeout): {_first_line(err)}",
            ) from err
        except pgerr.InsufficientPrivilege as err:
            raise WriterUnavailable(
                self.qualified_name,
                f"{step}: {_first_line(err)}; the "
                "role needs superuser, or REPLICATION plus EXECUTE on the "
                "backup functions",
            ) from err
        except psycopg.OperationalError as err:
            if self._cut:
                raise WriterTimeout(
                    self.qualified_name,
                    f"{step}: no answer from {self.where} "
                    f"within {timeout + CLIENT_GRACE:.1f} s, or the session was "
                    "released by the ceiling guard; session closed",
                ) from err
            raise WriterError(
                self.qualified_name,
                f"{step}: the session to {self.where} was "
                f"lost ({_first_line(err)}); the server may have restarted",
            ) from err
        except psycopg.Error as err:
            raise WriterError(self.qualified_name, f"{step} failed: {_first_line(err)}") from err
        finally:
            timer.cancel()

    def _close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    # -- the Writer interface ---------------------------------------------------------------

    def check(self) -> list[str]:
        with self._lock:
            self._conn = self._connect(self.settings.connect_timeout)
        try:
            self._read_facts(self.settings.statement_timeout)
        finally:
            self._close()
        notes = [
            f"{self.where}: PostgreSQL {self.version // 10000}"
            f"{' standby' if self.standby else ''}, archiving "
            f"{'on' if self.archiving else 'off'}"
        ]
        if self.settings.wait_for_archive and not self.archiving:
            notes.append(
                "WAL archiving is off: backup_label restores need the WAL copied by "
                "other means; an atomic snapshot restores by crash recovery"
            )
        return notes

    def _read_facts(self, timeout: float) -> None:
        conn = self._conn
        assert conn is not None
        self.version = conn.info.server_version
        if self.version < 90600:
            raise WriterUnavailable(
                self.qualified_name,
                f"PostgreSQL {self.version} is too old; non-exclusive backups need 9.6 or later",
            )
        rows = self._exec(
            "reading server settings",
            (
                "SELECT pg_is_in_recovery(), current_setting('wal_level'), "
                "current_setting('archive_mode'), current_setting('archive_command'), "
                "current_setting('wal_segment_size')"
            ),
            None,
            timeout,
        )
        recovery, wal_level, mode, command, seg = rows[0]
        self.standby = bool(recovery)
        if wal_level == "minimal":
            raise WriterUnavailable(
                self.qualified_name,
                "wal_level is minimal; online backups need wal_level = replica (restart required)",
            )
        active = mode == "always" or (mode == "on" and not self.standby)
        self.archiving = active and bool(command or self._archive_library(timeout))
        self.seg_size = parse_size(seg)

    def _archive_library(self, timeout: float) -> str:
        if self.version < 150000:
            return ""
        rows = self._exec(
            "reading archive_library", "SELECT current_setting('archive_library')", None, timeout
        )
        return str(rows[0][0])

    def prepare(self, op: Operation) -> None:
        self._close()
        self._reset_facts()
        self._cut, self._started = False, False
        budget = op.time_left(self.qualified_name, "connect")
        conn = self._connect(budget)
        with self._lock:
            self._conn = conn
        try:
            self._read_facts(min(self.settings.statement_timeout, op.deadline.remaining()))
            # the held session must survive an idle freeze window
            off = ["idle_in_transaction_session_timeout"]
            if self.version >= 140000:
                off.append("idle_session_timeout")
            for name in off:
                self._exec(
                    f"SET {name}",
                    "SELECT set_config(%s, '0', false)",
                    [name],
                    self.settings.statement_timeout,
                )
            self._checkpoint(op)
            self._start_backup(op)
        except WriterError:
            self._close()
            raise

    def _checkpoint(self, op: Operation) -> None:
        """CHECKPOINT first, so the one pg_backup_start then asks for is quick."""
        t0 = time.monotonic()
        try:
            left = op.time_left(self.qualified_name, "CHECKPOINT")
            self._exec("CHECKPOINT", "CHECKPOINT", None, min(self.settings.statement_timeout, left))
            op.log(self.qualified_name, f"CHECKPOINT in {time.monotonic() - t0:.3f} s")
        except WriterUnavailable as err:  # not allowed: only a slower start, not a failure
            op.log(self.qualified_name, f"CHECKPOINT skipped: {err}")
        except WriterTimeout as err:
            if self._cut:
                raise
            op.log(
                self.qualified_name,
                f"CHECKPOINT unfinished: {err}; the backup start will finish it",
            )

    def _start_backup(self, op: Operation) -> None:
        """Backup mode on the held session (prepare: it blocks no client). Raises
        WriterError/WriterTimeout; the caller closes the session, which ends it."""
        left = op.time_left(self.qualified_name, "pg_backup_start")
        if self.version >= 150000:
            sql = "SELECT pg_backup_start(%s, true)::text"
        else:
            sql = "SELECT pg_start_backup(%s, true, false)::text"
        t0 = time.monotonic()
        rows = self._exec(
            "pg_backup_start",
            sql,
            [op.label[:1000]],
            min(self.settings.statement_timeout, left),
        )
        self._started = True
        self._ms["start_ms"] = round((time.monotonic() - t0) * 1000, 1)
        self.start_lsn = str(rows[0][0])
        op.log(
            self.qualified_name,
            f"backup mode started at {self.start_lsn} in "
            f"{time.monotonic() - t0:.3f} s{' (standby)' if self.standby else ''}",
        )

    def freeze(self, op: Operation) -> None:
        """Nothing to lock: backup mode runs since prepare (checked, without a statement)."""
        conn = self._conn
        if not self._started or conn is None or conn.closed or self._cut:
            raise WriterError(
                self.qualified_name,
                "backup mode is not running on the held session (it was not started in "
                "prepare, or the session was lost)",
            )

    def thaw(self, op: Operation) -> None:
        """Nothing to release: backup mode blocks no client; finish() stops it."""

    def finish(self, op: Operation) -> None:
        if not self._started:
            self._close()
            return
        self._started = False
        late: WriterError | None = None
        try:
            if self._cut:
                raise WriterError(
                    self.qualified_name,
                    "the session holding backup mode was cut "
                    "by the ceiling guard; backup mode ended without "
                    "pg_backup_stop, so there is no backup_label (an atomic "
                    "snapshot still restores by crash recovery)",
                )
            t0 = time.monotonic()
            try:
                lsn, label, spcmap = self._stop()
            except WriterError as err:
                raise WriterError(
                    self.qualified_name,
                    f"{err}; backup mode has ended, no "
                    "backup_label was returned: the snapshot is usable only as an "
                    "atomic crash-consistent image",
                ) from err
            self._ms["stop_ms"] = round((time.monotonic() - t0) * 1000, 1)
            self._record(op, lsn, label, spcmap)
            if self.settings.wait_for_archive and self.archiving:
                t0 = time.monotonic()
                try:
                    self._wait_archived(op)
                except WriterError as err:
                    late = err
                self._ms["archive_wait_ms"] = round((time.monotonic() - t0) * 1000, 1)
        finally:
            self._close()
        self._write_artifacts(op, label, spcmap)
        if late is not None:
            raise late

    def _stop(self) -> tuple[str, str, str]:
        if self.version >= 150000:
            sql = "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        elif self.version >= 100000:
            sql = "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        else:
            sql = "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false)"
        rows = self._exec("pg_backup_stop", sql, None, self.settings.statement_timeout)
        lsn, label, spcmap = rows[0]
        return str(lsn), str(label or ""), str(spcmap or "")

    def _record(self, op: Operation, stop_lsn: str, label: str, spcmap: str) -> None:
        self._artifacts = {
            "start_lsn": self.start_lsn,
            "stop_lsn": stop_lsn,
            **backup_wal(label, stop_lsn, self.seg_size),
            "backup_label": label,
            "tablespace_map": spcmap,
            "standby": self.standby,
            "server_version": self.version,
            "wal_archiving": self.archiving,
            "wal_archived": None,
        }
        op.log(
            self.qualified_name,
            f"backup mode stopped at {stop_lsn} "
            f"(WAL {self._artifacts['wal_file_start']} .. {self._artifacts['wal_file_stop']})",
        )

    def _wait_archived(self, op: Operation) -> None:
        """Wait until the last WAL segment of the backup is archived, at most archive_timeout."""
        need = self._artifacts["wal_file_stop"]
        end = time.monotonic() + self.settings.archive_timeout
        last = None
        while True:
            rows = self._exec(
                "reading pg_stat_archiver",
                "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver",
                None,
                self.settings.statement_timeout,
            )
            last, failed = rows[0]
            if last and re.fullmatch(r"[0-9A-F]{24}", last[:24]) and last[:24] >= need:
                self._artifacts["wal_archived"] = True
                op.log(self.qualified_name, f"WAL archived through {last[:24]}")
                return
            if time.monotonic() >= end:
                break
            time.sleep(ARCHIVE_POLL)
        self._artifacts["wal_archived"] = False
        raise WriterError(
            self.qualified_name,
            (
                f"WAL segment {need} was not archived within "
                f"{self.settings.archive_timeout:.0f} s (last archived {last or 'none'}, last "
                f"failed {failed or 'none'}); backup mode has ended and the backup_label is in "
                "the report, but a restore from the WAL archive fails until that segment is "
                "archived: fix archive_command (see pg_stat_archiver), or raise "
                "postgres[].archive_timeout"
            ),
        )

    def _write_artifacts(self, op: Operation, label: str, spcmap: str) -> None:
        """Write the label files (the lock is released: the filesystems are thawed)."""
        if not self.settings.artifacts_dir:
            return
        folder = label_folder(self.settings.artifacts_dir, op.label)
        info = {
            k: v for k, v in self._artifacts.items() if k not in ("backup_label", "tablespace_map")
        }
        try:
            write_label_files(folder, label, spcmap, info)
            self._artifacts["artifacts_path"] = folder
            op.log(self.qualified_name, f"wrote backup_label to {folder}")
        except OSError as err:
            # the backup is fine and the label is in the report; only the copy on disk failed
            self._artifacts["artifacts_error"] = f"{folder}: {err.strerror}"
            op.log(
                self.qualified_name,
                f"could not write artifacts to {folder}: "
                f"{err.strerror}; the backup_label is in the report",
            )

    def abort(self, op: Operation) -> None:
        if self._started:
            op.log(self.qualified_name, "closing the session: the server aborts backup mode")
        self._started = False
        self._close()

    def artifacts(self) -> dict[str, Any]:
        out = dict(self._artifacts)
        if self._ms:
            out["timings"] = dict(self._ms)
        return out

    def emergency_release(self) -> None:
        self._cut_socket()
