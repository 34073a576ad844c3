"""The PostgreSQL writer against real servers, driven through the Writer interface."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hooks.errors import WriterError, WriterTimeout, WriterUnavailable
from hooks.postgres.settings import PostgresSettings
from hooks.postgres.wal import parse_lsn, parse_size, wal_file_name
from hooks.postgres.writer import PostgresWriter
from tests.helpers.dbservers import PG_VERSIONS, PgServer, Play
from tests.helpers.env import REPO
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.pg


def writer(server: PgServer, **kw: Any) -> PostgresWriter:
    kw.setdefault("name", "main")
    return PostgresWriter(PostgresSettings(dsn=server.dsn, **kw))


def holders(server: PgServer) -> list[tuple[int, str]]:
    return server.sql(
        "SELECT pid, query FROM pg_stat_activity WHERE application_name = 'quiesce-agent'"
    )


# -- WAL names, checked against the server ------------------------------------------------------


def test_wal_names_match_the_server(pg: PgServer) -> None:
    lsn, name = pg.sql("SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())")[
        0
    ]
    seg = parse_size(pg.sql("SHOW wal_segment_size")[0][0])
    assert wal_file_name(1, parse_lsn(lsn) // seg, seg) == name


# -- the cycle ----------------------------------------------------------------------------------


def test_a_tablespace_is_named_in_the_tablespace_map_and_written_beside_the_label(
    pg: PgServer, tmp_path: Path
) -> None:
    if pg.external:
        pytest.skip("the tablespace folder must be on the server's machine")
    location = pg.base / "ts_fast"
    location.mkdir()
    if pg.owner:
        os.chown(location, *pg.owner)
    pg.sql(f"CREATE TABLESPACE ts_fast LOCATION '{location}'")
    try:
        oid = pg.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'ts_fast'")[0][0]
        art = Play(writer(pg, artifacts_dir=str(tmp_path)), label="with-ts").freeze().thaw()
        assert art["tablespace_map"].strip() == f"{oid} {location}"
        written = tmp_path / "with-ts" / "tablespace_map"
        assert written.read_text() == art["tablespace_map"]
    finally:
        pg.sql("DROP TABLESPACE ts_fast")


def test_cycle_returns_label_wal_files_and_writes_artifacts(pg: PgServer, tmp_path: Path) -> None:
    label = f"snap-{uuid.uuid4().hex[:6]}"
    play = Play(writer(pg, artifacts_dir=str(tmp_path)), label=label).freeze()
    assert [q for _, q in holders(pg)] == ["SELECT pg_backup_start($1, true)::text"]
    art = play.thaw()

    assert f"LABEL: {label}" in art["backup_label"]
    assert art["wal_file_start"] in art["backup_label"]
    assert parse_lsn(art["stop_lsn"]) > parse_lsn(art["start_lsn"])
    assert art["wal_files"][0] == art["wal_file_start"]
    assert art["wal_files"][-1] == art["wal_file_stop"]
    if not pg.external:
        assert art["wal_archived"] is True
        assert (pg.archive_dir / art["wal_file_stop"]).exists()
        folder = tmp_path / label
        assert (folder / "backup_label").read_text() == art["backup_label"]
        assert json.loads((folder / "backup_info.json").read_text())["stop_lsn"] == art["stop_lsn"]
    assert holders(pg) == []  # the held session is closed after thaw
    assert any("CHECKPOINT" in m for m in play.messages)


# -- every version the writer claims ------------------------------------------------------------

START_CALL = {  # what the held session runs, by the server's major version
    14: "SELECT pg_start_backup($1, true, false)::text",
    15: "SELECT pg_backup_start($1, true)::text",
}


@pytest.mark.parametrize("version", PG_VERSIONS, ids=[f"pg{v}" for v in PG_VERSIONS])
def test_the_held_backup_on_every_version(version: int, pg_factory: Any, tmp_path: Path) -> None:
    server = pg_factory(version=version, archive=True).start()
    assert server.sql("SHOW server_version_num")[0][0].startswith(str(version))
    label = f"v{version}"
    play = Play(writer(server, artifacts_dir=str(tmp_path)), label=label).freeze()
    assert [q for _, q in holders(server)] == [START_CALL[min(version, 15)]]
    # non-exclusive: only the held session can end it, and the data directory has no label
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        server.sql("SELECT pg_backup_stop()" if version >= 15 else "SELECT pg_stop_backup()")
    assert not (server.datadir / "backup_label").exists()
    art = play.thaw()
    assert f"LABEL: {label}" in art["backup_label"]
    assert parse_lsn(art["stop_lsn"]) > parse_lsn(art["start_lsn"])
    assert art["wal_archived"] is True
    assert (server.archive_dir / art["wal_file_stop"]).exists()
    assert (tmp_path / label / "backup_label").read_text() == art["backup_label"]
    assert holders(server) == []


def test_backup_mode_belongs_to_the_held_session(pg: PgServer) -> None:
    """PostgreSQL 15+: another session cannot stop our backup (why the daemon holds one)."""
    play = Play(writer(pg)).freeze()
    try:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not in progress"):
            pg.sql("SELECT pg_backup_stop()")
    finally:
        play.thaw()


def test_idle_session_timeouts_do_not_kill_the_hold(pg: PgServer) -> None:
    if pg.external:
        pytest.skip("changes server-wide settings (ALTER SYSTEM): private server only")
    pg.sql("ALTER SYSTEM SET idle_session_timeout = '1s'")
    pg.sql("ALTER SYSTEM SET idle_in_transaction_session_timeout = '1s'")
    pg.sql("SELECT pg_reload_conf()")
    try:
        play = Play(writer(pg)).freeze()
        time.sleep(2.0)
        assert len(holders(pg)) == 1
        assert play.thaw()["stop_lsn"]
    finally:
        pg.sql("ALTER SYSTEM RESET idle_session_timeout")
        pg.sql("ALTER SYSTEM RESET idle_in_transaction_session_timeout")
        pg.sql("SELECT pg_reload_conf()")


def test_abort_ends_backup_mode(pg: PgServer) -> None:
    play = Play(writer(pg)).freeze()
    play.abort()
    assert wait_until(lambda: holders(pg) == [])
    play.abort()  # idempotent


# -- faults -------------------------------------------------------------------------------------


def test_killed_session_fails_the_thaw_clearly(pg: PgServer) -> None:
    play = Play(writer(pg)).freeze()
    ((pid, _),) = holders(pg)
    pg.sql("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(WriterError, match="lost .*no backup_label was returned"):
        play.thaw()
    if not pg.external:
        assert wait_until(lambda: "aborting backup due to backend exiting" in pg.log_text())


def test_server_restart_during_freeze_fails_the_thaw(pg_factory: object) -> None:
    server = pg_factory().start()  # type: ignore[operator]
    play = Play(writer(server)).freeze()
    server.stop("fast")
    server.start()
    with pytest.raises(WriterError, match="lost"):
        play.thaw()


def test_unreachable_server_names_where_but_not_the_password(tmp_path: Path) -> None:
    w = PostgresWriter(
        PostgresSettings(
            name="main",
            dsn=f"host={tmp_path} port=5999 user=postgres password=s3cret-pw dbname=postgres",
            connect_timeout=2,
        )
    )
    with pytest.raises(WriterUnavailable) as info:
        Play(w).freeze()
    assert str(tmp_path) in str(info.value)
    assert "s3cret-pw" not in str(info.value)


def test_stuck_archiver_is_bounded_and_the_label_still_reported(
    pg_factory: object, tmp_path: Path
) -> None:
    server = pg_factory(extra_conf="archive_command = 'false'").start()  # type: ignore[operator]
    w = writer(server, archive_timeout=1.5, artifacts_dir=str(tmp_path))
    play = Play(w, label="stuck").freeze()
    t0 = time.monotonic()
    with pytest.raises(WriterError, match="was not archived within 2 s.*fix archive_command"):
        play.thaw()
    assert time.monotonic() - t0 < 5
    art = w.artifacts()
    assert art["wal_archived"] is False
    assert "LABEL: stuck" in art["backup_label"]
    assert (tmp_path / "stuck" / "backup_label").exists()


def test_a_budget_spent_before_the_backup_start_refuses_it_and_holds_nothing(
    pg: PgServer,
) -> None:
    """The budget runs out between the CHECKPOINT and pg_backup_start (both in prepare)."""
    w = writer(pg)
    play = Play(w, budget=30)

    def sink(who: str, msg: str) -> None:
        if msg.startswith("CHECKPOINT"):
            play.op.deadline.at = time.monotonic()

    play.op.sink = sink
    with pytest.raises(WriterTimeout, match="pg_backup_start: freeze budget"):
        w.prepare(play.op)
    assert wait_until(lambda: holders(pg) == [])


def test_backup_mode_starts_in_prepare_and_stops_in_finish_not_in_the_window(
    pg: PgServer,
) -> None:
    w = writer(pg)
    play = Play(w)
    w.prepare(play.op)
    assert [q for _, q in holders(pg)] == ["SELECT pg_backup_start($1, true)::text"]
    w.freeze(play.op)  # nothing to lock: no statement
    w.thaw(play.op)  # nothing to release
    assert [q for _, q in holders(pg)] == ["SELECT pg_backup_start($1, true)::text"]
    w.finish(play.op)
    art = w.artifacts()
    assert art["stop_lsn"] and set(art["timings"]) >= {"start_ms", "stop_ms"}
    assert holders(pg) == []


def test_emergency_release_ends_backup_mode_from_another_thread(pg: PgServer) -> None:
    play = Play(writer(pg)).freeze()
    t0 = time.monotonic()
    guard = threading.Thread(target=play.writer.emergency_release)
    guard.start()
    guard.join(2)
    assert time.monotonic() - t0 < 0.5
    assert wait_until(lambda: holders(pg) == [], 5)
    with pytest.raises(WriterError, match="cut by the ceiling guard"):
        play.thaw()


HOLDER = """
import sys, time
from hooks.postgres.settings import PostgresSettings
from hooks.postgres.writer import PostgresWriter
from tests.helpers.dbservers import Play
Play(PostgresWriter(PostgresSettings(name="main", dsn=sys.argv[1]))).freeze()
print("frozen", flush=True)
time.sleep(600)
"""


def test_sigkilled_holder_takes_backup_mode_with_it(pg: PgServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg.dsn],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "frozen"
        assert len(holders(pg)) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: holders(pg) == [], 10)
        if not pg.external:
            assert wait_until(lambda: "aborting backup due to backend exiting" in pg.log_text())
    finally:
        proc.kill()
        proc.wait()


def test_standby(pg: PgServer, pg_factory: object) -> None:
    if pg.external:
        pytest.skip("the standby is cloned from the private server")
    standby = pg_factory()  # type: ignore[operator]
    subprocess.run(["rm", "-rf", str(standby.datadir)], check=True)
    subprocess.run(
        [
            str(standby.bindir / "pg_basebackup"),
            "-d",
            pg.dsn,
            "-D",
            str(standby.datadir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
        check=True,
        capture_output=True,
        timeout=60,
        **(
            {"user": standby.owner[0], "group": standby.owner[1], "extra_groups": []}
            if standby.owner
            else {}
        ),
    )
    standby.configure(archive=False)
    standby.start()
    assert standby.sql("SELECT pg_is_in_recovery()") == [(True,)]
    art = Play(writer(standby)).freeze().thaw()
    assert art["standby"] is True
    assert "BACKUP FROM: standby" in art["backup_label"]
    assert art["wal_archived"] is None  # archive_mode=on does not archive on a standby


def checkpointer(server: PgServer) -> int:
    return int(
        server.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")[0][0]
    )


def test_stuck_backup_start_is_bounded_then_released(pg_factory: object) -> None:
    """A checkpointer that never finishes (SIGSTOPped) makes pg_backup_start wait: the
    statement_timeout bounds it, and the ceiling guard's release ends the wait at once."""
    server = pg_factory().start()  # type: ignore[operator]
    stopped = checkpointer(server)
    os.kill(stopped, signal.SIGSTOP)
    try:
        w = writer(server, statement_timeout=1.0)
        play = Play(w)
        t0 = time.monotonic()
        with pytest.raises(WriterTimeout, match="pg_backup_start timed out after 1.0 s"):
            play.freeze()
        assert time.monotonic() - t0 < 4  # 1 s CHECKPOINT (not fatal) + 1 s start
        assert any("CHECKPOINT unfinished" in m for m in play.messages)

        w = writer(server, statement_timeout=30.0)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                Play(w).freeze()
            except BaseException as err:  # noqa: BLE001 - reported to the test
                errors.append(err)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        w.emergency_release()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 2
        assert errors and isinstance(errors[0], WriterError)
    finally:
        os.kill(stopped, signal.SIGCONT)
