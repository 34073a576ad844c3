"""The MySQL/MariaDB writer against a real MariaDB, driven through the Writer interface."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from hooks.errors import WriterError, WriterTimeout, WriterUnavailable
from hooks.mysql.settings import MysqlSettings
from hooks.mysql.writer import MysqlWriter
from tests.helpers.dbservers import MariaServer, Play
from tests.helpers.env import REPO
from tests.helpers.waiting import Background, wait_until

pytestmark = pytest.mark.mysql


@pytest.fixture
def db(maria: MariaServer) -> Iterator[str]:
    """A fresh database with an InnoDB table t(i) holding one row."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    maria.sql(f"CREATE DATABASE {name}")
    maria.sql(f"CREATE TABLE {name}.t (i INT PRIMARY KEY, v INT DEFAULT 0) ENGINE=InnoDB")
    maria.sql(f"INSERT INTO {name}.t (i) VALUES (1)")
    yield name
    maria.sql(f"DROP DATABASE {name}")


def writer(maria: MariaServer, **kw: object) -> MysqlWriter:
    return MysqlWriter(maria.writer_config(**kw))


def test_instance_lock_is_refused_on_mariadb(maria: MariaServer) -> None:
    """No MySQL 8 here: LOCK INSTANCE FOR BACKUP is only checked for its clear refusal."""
    w = writer(maria, lock="instance_lock")
    with pytest.raises(WriterUnavailable, match="needs MySQL 8.0 .* use lock: backup_stage"):
        w.check()
    with pytest.raises(WriterUnavailable, match="instance_lock"):
        Play(w).freeze()


def test_auto_falls_back_to_ftwrl_for_myisam(maria: MariaServer, db: str) -> None:
    assert "lock backup_stage" in writer(maria).check()[0]
    maria.sql(f"CREATE TABLE {db}.m (i INT) ENGINE=MyISAM")
    note = writer(maria).check()[0]
    assert "lock ftwrl" in note and "1 MyISAM" in note


# -- each strategy holds writes and reports coordinates -----------------------------------------


@pytest.mark.parametrize("lock", ["ftwrl", "backup_stage", "auto"])
def test_write_blocks_while_locked_and_completes_after(
    maria: MariaServer, db: str, lock: str
) -> None:
    play = Play(writer(maria, lock=lock)).freeze()
    art = play.writer.artifacts()
    gtid_locked = maria.sql("SELECT @@gtid_binlog_pos")[0][0]
    insert = Background(maria, f"INSERT INTO {db}.t (i) VALUES (2)")
    time.sleep(0.8)
    assert insert.done_at is None, "a commit went through while the lock was held"
    assert maria.sql("SELECT @@gtid_binlog_pos")[0][0] == gtid_locked
    play.thaw()
    assert insert.join() >= 0.8 and insert.error is None
    assert maria.sql(f"SELECT COUNT(*) FROM {db}.t") == [(2,)]

    assert art["lock"] == ("backup_stage" if lock == "auto" else lock)
    assert art["gtid"] == gtid_locked and art["gtid_variable"] == "@@gtid_binlog_pos"
    if maria.binlog:
        file, pos = maria.sql("SHOW MASTER STATUS")[0][:2]
        assert art["binlog_file"] == file and 0 < art["binlog_position"] < pos
        assert art["coordinates_exact"] is True


def test_backup_stage_prepare_blocks_no_commit_and_the_lock_step_blocks_them(
    maria: MariaServer, db: str
) -> None:
    """START and FLUSH are taken in prepare, where they block no client; BLOCK_DDL and
    BLOCK_COMMIT are the lock step."""
    w = writer(maria, lock="backup_stage")
    play = Play(w)
    w.prepare(play.op)
    try:
        assert any("BACKUP STAGE START, FLUSH" in m for m in play.messages)
        assert Background(maria, f"INSERT INTO {db}.t (i) VALUES (3)").join(5) < 5
        w.freeze(play.op)
        blocked = Background(maria, f"INSERT INTO {db}.t (i) VALUES (4)")
        time.sleep(0.5)
        assert blocked.done_at is None, "a commit went through under BLOCK_COMMIT"
        w.thaw(play.op)
        assert blocked.join() >= 0.5 and blocked.error is None
    finally:
        w.abort(play.op)


def test_a_prepared_backup_stage_ends_with_abort(maria: MariaServer, db: str) -> None:
    w = writer(maria, lock="backup_stage")
    play = Play(w)
    w.prepare(play.op)
    w.abort(play.op)  # another writer failed: this one never locked
    again = Play(writer(maria, lock="backup_stage")).freeze()  # one holder at a time
    again.thaw()


# -- long statements and stuck lock attempts ----------------------------------------------------


def test_long_query_makes_ftwrl_wait_then_fail_without_stalling(
    maria: MariaServer, db: str
) -> None:
    long = Background(maria, f"UPDATE {db}.t SET v = v + SLEEP(2.5)")
    time.sleep(0.3)
    w = writer(maria, lock="ftwrl", long_query_wait=1.0, long_query_threshold=0.2)
    t0 = time.monotonic()
    other = Background(maria, f"INSERT INTO {db}.t (i) VALUES (7)")
    with pytest.raises(WriterError, match=r"still running after waiting 1.0 s .*UPDATE"):
        Play(w).freeze()
    assert 0.9 < time.monotonic() - t0 < 3
    assert other.join() < 1.0  # nobody queued behind a lock attempt
    long.join()
    assert long.error is None  # not killed


def test_long_query_is_killed_when_configured(maria: MariaServer, db: str) -> None:
    long = Background(maria, f"UPDATE {db}.t SET v = v + SLEEP(6)")
    time.sleep(0.3)
    w = writer(
        maria, lock="ftwrl", long_query_wait=0.5, long_query_threshold=0.2, kill_long_queries=True
    )
    play = Play(w).freeze()
    assert long.join() < 3
    assert isinstance(long.error, pymysql.err.OperationalError) and long.error.args[0] == 1317
    assert any("killed 1 long statement" in m for m in play.messages)
    play.thaw()


def test_stuck_ftwrl_is_killed_from_a_second_session(maria: MariaServer, db: str) -> None:
    """The long-query check off (threshold high): the lock attempt itself is bounded."""
    long = Background(maria, f"UPDATE {db}.t SET v = v + SLEEP(2.5)")
    time.sleep(0.3)
    w = writer(maria, lock="ftwrl", long_query_threshold=100, lock_wait_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(WriterTimeout, match="FLUSH TABLES WITH READ LOCK did not get its lock"):
        Play(w).freeze()
    assert time.monotonic() - t0 < 3
    # the lock attempt is gone: writes flow again at once
    assert Background(maria, f"INSERT INTO {db}.t (i) VALUES (8)").join() < 1.0
    long.join()


def test_backup_stage_queues_behind_another_holder_and_is_bounded(
    maria: MariaServer, db: str
) -> None:
    other = maria.connect()
    try:
        other.cursor().execute("BACKUP STAGE START")  # a running mariabackup, say
        w = writer(maria, lock="backup_stage", lock_wait_timeout=1)
        t0 = time.monotonic()
        with pytest.raises(WriterTimeout, match="BACKUP STAGE START did not get its lock"):
            Play(w).freeze()
        assert time.monotonic() - t0 < 3
    finally:
        other.close()


# -- sessions that die -------------------------------------------------------------------------


def test_killed_session_during_freeze_fails_thaw_and_releases(maria: MariaServer, db: str) -> None:
    play = Play(writer(maria, lock="backup_stage")).freeze()
    maria.sql(f"KILL {play.writer._held_id}")  # noqa: SLF001 - the held session, as an admin would
    assert Background(maria, f"INSERT INTO {db}.t (i) VALUES (3)").join() < 2
    with pytest.raises(WriterError, match="session .* was lost"):
        play.thaw()


def test_emergency_release_from_another_thread(maria: MariaServer, db: str) -> None:
    play = Play(writer(maria, lock="ftwrl")).freeze()
    insert = Background(maria, f"INSERT INTO {db}.t (i) VALUES (4)")
    time.sleep(0.3)
    t0 = time.monotonic()
    play.writer.emergency_release()
    assert time.monotonic() - t0 < 0.5
    assert insert.join() < 3 and insert.error is None
    with pytest.raises(WriterError):
        play.thaw()


def test_emergency_release_while_the_lock_attempt_waits(maria: MariaServer, db: str) -> None:
    other = maria.connect()
    try:
        other.cursor().execute("BACKUP STAGE START")
        w = writer(maria, lock="backup_stage", lock_wait_timeout=30)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                Play(w).freeze()
            except BaseException as err:  # noqa: BLE001 - reported to the test
                errors.append(err)

        t = threading.Thread(target=run)
        t.start()
        assert wait_until(lambda: w._held_id != 0, 5)  # noqa: SLF001 - the session exists
        time.sleep(0.5)
        t0 = time.monotonic()
        w.emergency_release()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 3
        assert errors and isinstance(errors[0], WriterError)
        held = w._held_id  # noqa: SLF001
        assert wait_until(
            lambda: (
                not maria.sql(
                    "SELECT ID FROM information_schema.PROCESSLIST "
                    "WHERE INFO LIKE 'BACKUP STAGE%%' AND ID <> %s",
                    [other.thread_id()],
                )
            ),
            5,
        ), held
    finally:
        other.close()


HOLDER = """
import sys, time
from hooks.mysql.settings import MysqlSettings
from hooks.mysql.writer import MysqlWriter
from tests.helpers.dbservers import Play
Play(MysqlWriter(MysqlSettings(name="x", unix_socket=sys.argv[1], lock=sys.argv[2]))).freeze()
print("frozen", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("lock", ["ftwrl", "backup_stage"])
def test_sigkilled_holder_takes_the_lock_with_it(maria: MariaServer, db: str, lock: str) -> None:
    if maria.password:
        pytest.skip("the holder subprocess connects without a password")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, maria.socket, lock],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "frozen"
        insert = Background(maria, f"INSERT INTO {db}.t (i) VALUES (5)")
        time.sleep(0.5)
        assert insert.done_at is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert insert.join() < 5 and insert.error is None
    finally:
        proc.kill()
        proc.wait()


def test_unreachable_server_and_bad_password(maria: MariaServer, db: str, tmp_path: Path) -> None:
    w = MysqlWriter(
        MysqlSettings(name="x", unix_socket=str(tmp_path / "nope.sock"), connect_timeout=1)
    )
    with pytest.raises(WriterUnavailable, match="cannot connect to .*nope.sock"):
        w.check()
    user = f"u{uuid.uuid4().hex[:6]}"
    maria.sql(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY 'right-pw'")
    try:
        maria.sql(f"GRANT RELOAD, PROCESS, BINLOG MONITOR ON *.* TO '{user}'@'localhost'")
        pw = tmp_path / "pw"
        pw.write_text("wrong-pw\n")
        w = MysqlWriter(
            MysqlSettings(name="x", unix_socket=maria.socket, user=user, password_file=str(pw))
        )
        with pytest.raises(WriterUnavailable, match="password_file") as info:
            w.check()
        assert "wrong-pw" not in str(info.value)
        pw.write_text("right-pw\n")
        play = Play(
            MysqlWriter(
                MysqlSettings(
                    name="x",
                    unix_socket=maria.socket,
                    user=user,
                    password_file=str(pw),
                    lock="backup_stage",
                )
            )
        ).freeze()
        assert play.thaw()["lock"] == "backup_stage"
    finally:
        maria.sql(f"DROP USER '{user}'@'localhost'")


def test_server_crash_while_locked_fails_the_thaw(maria_factory: object) -> None:
    server = maria_factory().start()  # type: ignore[operator]
    play = Play(MysqlWriter(server.writer_config(lock="backup_stage"))).freeze()
    server.kill()
    server.start()
    with pytest.raises(WriterError, match="was lost"):
        play.thaw()
    assert Play(MysqlWriter(server.writer_config())).freeze().thaw()["lock"] == "backup_stage"
