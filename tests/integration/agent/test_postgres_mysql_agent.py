"""The whole cycle through the daemon: PostgreSQL and MariaDB on a filesystem the agent froze.

Both data directories live on one loop-mounted ext4 that this test made; the daemon is
configured with both databases and that filesystem, and driven over its socket. While the
agent holds everything, a MariaDB write blocks; the test copies both data directories (a
snapshot); after thaw the write completes. The copies restore with every row committed before
the freeze and none after: PostgreSQL by crash recovery and again with the backup_label from
the thaw report and the WAL archive, MariaDB by its own recovery.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hooks.kernel import freeze_path
from tests.helpers.agentproc import AgentProcess
from tests.helpers.dbservers import MariaServer, PgServer, copy_tree
from tests.helpers.waiting import Background, wait_until

pytestmark = [pytest.mark.pg, pytest.mark.mysql, pytest.mark.root, pytest.mark.slow]


def rows_pg(server: PgServer) -> list[tuple[str, int]]:
    return server.sql("SELECT phase, count(*)::int FROM t GROUP BY phase ORDER BY phase")


def rows_my(server: MariaServer) -> list[tuple[str, int]]:
    return [
        (p, int(n))
        for p, n in server.sql("SELECT phase, COUNT(*) FROM d.t GROUP BY phase ORDER BY phase")
    ]


def writer_report(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(w for w in report["writers"] if w["name"] == name)


def test_agent_freezes_both_databases_and_their_filesystem(
    make_fs: Callable[..., Any],
    pg_factory: Callable[..., PgServer],
    maria_factory: Callable[..., MariaServer],
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    fs = make_fs("ext4", 500)
    pg = pg_factory(datadir=Path(fs.path) / "pgdata", archive=True).start()
    my = maria_factory(datadir=Path(fs.path) / "mydata").start()
    pg.sql("CREATE TABLE t (i int PRIMARY KEY, phase text)")
    pg.sql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 500) g")
    my.sql("CREATE DATABASE d")
    my.sql("CREATE TABLE d.t (i INT PRIMARY KEY, phase VARCHAR(10)) ENGINE=InnoDB")
    my.sql("INSERT INTO d.t SELECT seq, 'before' FROM d.seq_1_to_500")

    agent = AgentProcess(
        short_tmp,
        {
            "freeze": {"ceiling_seconds": 30, "timeout_seconds": 15},
            "filesystems": {"mounts": [fs.path]},
            "postgres": [{"name": "main", "dsn": pg.dsn, "artifacts_dir": str(tmp_path / "art")}],
            "mysql": [{"name": "main", "unix_socket": my.socket, "user": my.user}],
        },
    ).start()
    try:
        frozen = agent.call("freeze", {"label": "agent-snap"})
        assert "return" in frozen, frozen
        assert frozen["return"]["consistency"] == "application"
        assert [w["name"] for w in frozen["return"]["writers"]] == [
            "mysql:main",
            "postgres:main",
            "filesystems:listed",
        ]
        with pytest.raises(OSError) as busy:  # a second FIFREEZE: the agent holds it frozen
            freeze_path(fs.path)
        assert busy.value.errno == errno.EBUSY
        during = Background(my, "INSERT INTO d.t VALUES (9000, 'during')")
        # the snapshot: the data directories as they are on the frozen filesystem
        copy_tree(pg.datadir, tmp_path / "pg-snap")
        copy_tree(my.datadir, tmp_path / "my-snap")
        assert during.done_at is None
        thawed = agent.call("thaw")
        assert "return" in thawed, thawed
        assert during.join() > 0 and during.error is None
    finally:
        agent.stop()
    report = thawed["return"]
    pg_art = writer_report(report, "postgres:main")["artifacts"]
    my_art = writer_report(report, "mysql:main")["artifacts"]
    # what goes where: PostgreSQL's backup starts in prepare and stops once every lock is
    # released; MariaDB's START and FLUSH are in prepare, only its blocking stages in the lock
    # (report figures are rounded to 0.1 ms: 0.2 ms of slack)
    t = report["timings"]
    pg_w, my_w = writer_report(report, "postgres:main"), writer_report(report, "mysql:main")
    assert pg_w["at_ms"]["prepare"] + pg_w["prepare_ms"] <= t["prepare_ms"] + 0.2
    assert any("backup mode started" in m for m in pg_w["messages"])
    assert any("BACKUP STAGE START, FLUSH" in m for m in my_w["messages"])
    assert pg_w["at_ms"]["finish"] >= my_w["at_ms"]["thaw"] + my_w["thaw_ms"] - 0.2
    assert pg_w["at_ms"]["finish"] >= t["prepare_ms"] + t["blocked_ms"] - 0.2
    assert t["held_ms"] <= t["blocked_ms"]
    assert my_art["lock"] == "backup_stage" and pg_art["wal_archived"] is True
    assert (tmp_path / "art" / "agent-snap" / "backup_label").read_text() == pg_art["backup_label"]
    pg.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(501, 600) g")
    my.sql("INSERT INTO d.t SELECT seq, 'after' FROM d.seq_501_to_600")

    # PostgreSQL, path 1: crash recovery of the atomic image
    crash = pg_factory(source=tmp_path / "pg-snap", archive=False).start()
    assert rows_pg(crash) == [("before", 500)]
    crash.stop()
    # PostgreSQL, path 2: the report's backup_label + the WAL archive
    labelled = pg_factory(
        source=tmp_path / "pg-snap",
        archive=False,
        extra_conf=(
            f"restore_command = 'cp {pg.archive_dir}/%f %p'\n"
            "recovery_target = 'immediate'\nrecovery_target_action = 'promote'\n"
        ),
    )
    for name, text in (("backup_label", pg_art["backup_label"]), ("recovery.signal", "")):
        (labelled.datadir / name).write_text(text)
        if labelled.owner:
            os.chown(labelled.datadir / name, *labelled.owner)
    labelled.start()
    assert rows_pg(labelled) == [("before", 500)]
    assert "consistent recovery state reached" in labelled.log_text()

    # MariaDB: its own crash recovery; binlog and GTID as reported
    assert (
        os.path.getsize(tmp_path / "my-snap" / my_art["binlog_file"]) == my_art["binlog_position"]
    )
    restored = maria_factory(source=tmp_path / "my-snap").start()
    assert rows_my(restored) == [("before", 500)]
    assert restored.sql("SELECT @@gtid_binlog_pos")[0][0] == my_art["gtid"]


def test_killed_database_sessions_fail_the_thaw_by_name(
    pg: PgServer, maria: MariaServer, short_tmp: Path
) -> None:
    """An admin kills the agent's sessions while it holds them: the thaw reply is an error
    naming both database writers; the locks are gone, the agent is idle again."""
    if pg.external or maria.external:
        pytest.skip("the daemon tests use the private servers")
    maria.sql("CREATE DATABASE IF NOT EXISTS killed")
    maria.sql("CREATE TABLE IF NOT EXISTS killed.t (i INT PRIMARY KEY) ENGINE=InnoDB")
    maria.sql("DELETE FROM killed.t")
    agent = AgentProcess(
        short_tmp,
        {
            "freeze": {"ceiling_seconds": 30, "timeout_seconds": 10},
            "postgres": [{"name": "main", "dsn": pg.dsn}],
            "mysql": [
                {"name": "main", "unix_socket": maria.socket, "user": maria.user, "lock": "ftwrl"}
            ],
        },
    ).start()
    try:
        assert "return" in agent.call("freeze", {"label": "killed"})
        insert = Background(maria, "INSERT INTO killed.t VALUES (1)")
        # the insert's own session sleeps until it sends: kill the agent's only once the
        # insert waits on the lock, or the KILL below may take the insert's session instead
        assert wait_until(lambda: blocked_inserts(maria) == 1), "the insert never queued"
        pg.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'quiesce-agent'"
        )
        mine = maria.sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Sleep' AND USER = %s",
            [maria.user],
        )
        for (session_id,) in mine:
            maria.sql(f"KILL {int(session_id)}")
        assert insert.join() < 5 and insert.error is None  # the lock went with the session
        reply = agent.call("thaw")
        assert reply["error"]["class"] == "WriterFailed", reply
        desc = reply["error"]["desc"]
        assert "postgres:main" in desc or "mysql:main" in desc
        errors = {w["name"]: w["error"] for w in reply["error"]["data"]["report"]["writers"]}
        assert "was lost" in errors["postgres:main"]
        assert "was lost" in errors["mysql:main"]
        assert agent.call("status")["return"]["state"] == "idle"
    finally:
        agent.stop()


def blocked_inserts(maria: MariaServer) -> int:
    """How many sessions are running the test's INSERT (queued behind the agent's lock)."""
    rows = maria.sql(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO killed%'"
    )
    return int(rows[0][0])
