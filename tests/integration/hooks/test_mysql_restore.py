"""A copy of a frozen MariaDB data directory restores by its own crash recovery.

The data directory lives on a loop-mounted ext4 that this test made. While the writer holds
its lock a write blocks; the test freezes that filesystem, copies the data directory, thaws;
the write completes only after the writer's thaw; the copy holds every row committed before
the freeze, none after, and its binary log ends exactly at the reported position.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hooks.mysql.writer import MysqlWriter
from tests.helpers.dbservers import MariaServer, Play, copy_tree, fsfreeze
from tests.helpers.waiting import Background

pytestmark = [pytest.mark.mysql, pytest.mark.root, pytest.mark.slow]


def phases(server: MariaServer) -> list[tuple[str, int]]:
    return [
        (p, int(n))
        for p, n in server.sql("SELECT phase, COUNT(*) FROM d.t GROUP BY phase ORDER BY phase")
    ]


@pytest.mark.parametrize("lock", ["backup_stage", "ftwrl"])
def test_frozen_copy_restores_with_rows_before_and_none_after(
    make_fs: object, maria_factory: object, tmp_path: Path, lock: str
) -> None:
    fs = make_fs("ext4", 400)  # type: ignore[operator]
    server = maria_factory(datadir=Path(fs.path) / "mydata").start()  # type: ignore[operator]
    server.sql("CREATE DATABASE d")
    server.sql("CREATE TABLE d.t (i INT PRIMARY KEY, phase VARCHAR(10)) ENGINE=InnoDB")
    server.sql("INSERT INTO d.t SELECT seq, 'before' FROM d.seq_1_to_1000")

    play = Play(MysqlWriter(server.writer_config(lock=lock))).freeze()
    during = Background(server, "INSERT INTO d.t VALUES (5000, 'during')")
    time.sleep(0.3)
    copy = tmp_path / "copy"
    fsfreeze(fs.path, True)
    try:
        copy_tree(server.datadir, copy)
    finally:
        fsfreeze(fs.path, False)
    time.sleep(0.3)
    assert during.done_at is None, "the write went through although the lock was held"
    art = play.thaw()
    assert during.join() > 0.6 and during.error is None
    server.sql("INSERT INTO d.t SELECT seq, 'after' FROM d.seq_1001_to_1100")
    assert phases(server) == [("after", 100), ("before", 1000), ("during", 1)]

    # the binary log in the image ends exactly where the writer said
    assert os.path.getsize(copy / art["binlog_file"]) == art["binlog_position"]

    restored = maria_factory(source=copy).start()  # type: ignore[operator]
    assert phases(restored) == [("before", 1000)]
    assert restored.sql("SELECT @@gtid_binlog_pos")[0][0] == art["gtid"]
    log = restored.log_text()
    assert "InnoDB: Starting crash recovery" in log
    if restored.binlog:  # a transaction prepared but not in the binlog is rolled back
        assert "Recovering after a crash using binlog" in log
