"""Quiesced snapshots of a served disk: through the server's control socket, records kept
beside the disk until it is next opened unserved; and restore-artifacts."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.disk import Disk
from host.serve_control import ControlServer, IOGate
from host.snapshot_cycle import Faults, NotConfirmed, take
from host.snapshot_target import RECORDS, EngineTarget, ServedTarget, load_snapshot, open_target
from tests.conftest import need_root
from tests.e2e.conftest import frozen_now
from tests.e2e_host.conftest import run_cli

pytestmark = pytest.mark.root


@pytest.fixture
def served(disk_dir: Path) -> Iterator[Disk]:
    """The disk held by a control server in this process, as ``quiesce-host serve`` does."""
    disk = Disk.open(disk_dir)
    server = ControlServer(disk_dir, disk, IOGate())
    server.start()
    yield disk
    server.shutdown()
    disk.close()


def test_a_served_disk_is_snapshotted_through_its_server(ext4, start_agent, disk_dir,
                                                         served) -> None:
    need_root()
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    target = open_target(disk_dir)
    assert isinstance(target, ServedTarget)
    out = take(target, "live", f"unix:{agent.socket}")
    assert out.confirmed and out.consistency == "filesystem"
    assert out.host["switch"]["paused_ms"] >= 0  # the server's own cut timing
    assert not frozen_now(ext4.path)
    # the server keeps the provisional entry; the final record waits beside the disk
    assert json.loads((disk_dir / "tree.json").read_text())["snapshots"][0]["consistency"] \
        == "crash"
    snap = load_snapshot(disk_dir, "live")
    assert snap["consistency"] == "filesystem" and snap["record_pending"]
    assert [s["name"] for s in served.snapshot_list()] == ["live"]


def test_the_record_is_folded_in_when_the_disk_is_next_opened(ext4, start_agent, disk_dir,
                                                              served) -> None:
    need_root()
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    take(open_target(disk_dir), "live", f"unix:{agent.socket}")
    served.close()  # the server stops (the fixture's close is then a no-op)
    target = open_target(disk_dir)
    assert isinstance(target, EngineTarget)
    target.close()
    assert not (disk_dir / RECORDS).exists()
    tree = json.loads((disk_dir / "tree.json").read_text())
    assert tree["snapshots"][0]["consistency"] == "filesystem"
    assert "record_pending" not in load_snapshot(disk_dir, "live")


def test_unconfirmed_on_a_served_disk_is_said_when_it_cannot_be_deleted(
        ext4, start_agent, disk_dir, served) -> None:
    need_root()
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})

    class Kill(Faults):
        def after_freeze(self) -> None:
            os.kill(agent.pid, signal.SIGKILL)

    with pytest.raises(NotConfirmed, match="could not be deleted.*recorded as crash"):
        take(open_target(disk_dir), "dead", f"unix:{agent.socket}", faults=Kill())
    assert load_snapshot(disk_dir, "dead")["consistency"] == "crash"


def test_restore_artifacts_writes_the_label_into_a_data_directory(disk_dir, short_tmp,
                                                                  capsys) -> None:
    label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
    with Disk.open(disk_dir) as d:
        d.snapshot_create("pg", consistency="application",
                          artifacts={"postgres:main": {"backup_label": label,
                                                       "tablespace_map": "",
                                                       "start_lsn": "0/2000028"}})
    datadir = short_tmp / "data"
    assert run_cli(["snapshot", "restore-artifacts", str(disk_dir), "pg", str(datadir)]) == 2
    assert "not a PostgreSQL data directory" in capsys.readouterr().err
    datadir.mkdir()
    (datadir / "PG_VERSION").write_text("15\n")
    assert run_cli(["snapshot", "restore-artifacts", str(disk_dir), "pg", str(datadir)]) == 0
    assert (datadir / "backup_label").read_text() == label
    assert oct((datadir / "backup_label").stat().st_mode & 0o777) == "0o600"
    assert not (datadir / "tablespace_map").exists()
    assert run_cli(["snapshot", "restore-artifacts", str(disk_dir), "pg", str(datadir)]) == 2
    assert "--force" in capsys.readouterr().err
