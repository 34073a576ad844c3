"""A copy of a frozen PostgreSQL data directory restores, both ways docs/databases.md gives.

The data directory lives on a loop-mounted ext4 that this test made; the writer puts the
cluster in backup mode, the test freezes that filesystem, copies the data directory (reads
work on a frozen filesystem), thaws, and the writer ends backup mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hooks.postgres.settings import PostgresSettings
from hooks.postgres.writer import PostgresWriter
from tests.helpers.dbservers import PG_VERSIONS, PgServer, Play, copy_tree, fsfreeze

pytestmark = [pytest.mark.pg, pytest.mark.root, pytest.mark.slow]


def phases(server: PgServer) -> list[tuple[str, int]]:
    return server.sql("SELECT phase, count(*)::int FROM t GROUP BY phase ORDER BY phase")


def put(server: PgServer, name: str, text: str) -> None:
    path = server.datadir / name
    path.write_text(text)
    if server.owner:
        os.chown(path, *server.owner)


@pytest.mark.parametrize("version", PG_VERSIONS, ids=[f"pg{v}" for v in PG_VERSIONS])
def test_frozen_copy_restores_by_crash_recovery_and_with_the_label(
    version: int, make_fs: object, pg_factory: Any, tmp_path: Path
) -> None:
    fs = make_fs("ext4", 300)  # type: ignore[operator]
    datadir = Path(fs.path) / "pgdata"
    server = pg_factory(datadir=datadir, archive=True, version=version).start()
    server.sql("CREATE TABLE t (i int PRIMARY KEY, phase text)")
    server.sql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g")

    play = Play(
        PostgresWriter(PostgresSettings(name="main", dsn=server.dsn)), label="frozen"
    ).freeze()
    copy = tmp_path / "copy"
    fsfreeze(fs.path, True)
    try:
        copy_tree(server.datadir, copy)
    finally:
        fsfreeze(fs.path, False)
    art = play.thaw()
    server.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(1001, 1100) g")
    server.sql("SELECT pg_switch_wal()")

    # non-exclusive backup mode leaves no backup_label in the image
    assert not (copy / "backup_label").exists()

    # 1. an atomic snapshot restores by plain crash recovery
    crash = pg_factory(source=copy, archive=False, version=version).start()
    assert phases(crash) == [("before", 1000)]
    assert "not properly shut down; automatic recovery in progress" in crash.log_text()
    crash.stop()

    # 2. with the reported backup_label and the WAL archive (archive recovery)
    recovery = (
        f"restore_command = 'cp {server.archive_dir}/%f %p'\n"
        "recovery_target = 'immediate'\nrecovery_target_action = 'promote'\n"
    )
    labelled = pg_factory(source=copy, archive=False, extra_conf=recovery, version=version)
    put(labelled, "backup_label", art["backup_label"])
    put(labelled, "recovery.signal", "")
    labelled.start()
    assert phases(labelled) == [("before", 1000)]
    log = labelled.log_text()
    if version >= 15:  # 14 says nothing of the label itself; step 3 shows it is honoured
        assert "starting backup recovery with redo LSN" in log
    assert "restored log file" in log and "consistent recovery state reached" in log

    # 3. the label without the archived WAL does not restore (why the archive is required)
    broken = pg_factory(
        source=copy, archive=False, extra_conf="restore_command = 'false'\n", version=version
    )
    put(broken, "backup_label", art["backup_label"])
    put(broken, "recovery.signal", "")
    with pytest.raises(RuntimeError):
        broken.start()
    assert "WAL ends before end of online backup" in broken.log_text()
