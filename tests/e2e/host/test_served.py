"""Quiesced snapshots of a served disk, through the server's control socket: the final record,
a failed quiesce taken back while serving; and restore-artifacts."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.serve.control import ControlServer
from host.serve.device import IOGate
from host.snapshots.cycle import Faults, NotConfirmed, QuiesceFailed, take
from host.snapshots.target import ServedTarget, load_snapshot, open_target
from tests.helpers.env import need_root
from tests.helpers.freeze import frozen_now
from tests.helpers.hostcli import run_cli

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


def test_a_served_disk_is_snapshotted_through_its_server(
    ext4, start_agent, disk_dir, served
) -> None:
    need_root()
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    target = open_target(disk_dir)
    assert isinstance(target, ServedTarget)
    out = take(target, "live", f"unix:{agent.socket}")
    assert out.confirmed and out.consistency == "filesystem"
    assert out.host["switch"]["paused_ms"] >= 0  # the server's own cut timing
    assert not frozen_now(ext4.path)
    # the final record went in through the server, straight into tree.json
    snap = json.loads((disk_dir / "tree.json").read_text())["snapshots"][0]
    assert snap["consistency"] == "filesystem"
    assert snap["report"]["agent"]["outcome"] == "thawed"
    assert load_snapshot(disk_dir, "live")["consistency"] == "filesystem"
    assert [s["name"] for s in served.snapshot_list()] == ["live"]


class KillAgentAfterFreeze(Faults):
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def after_freeze(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


def test_an_unconfirmed_quiesce_takes_its_snapshot_back_while_serving(
    ext4, start_agent, disk_dir, served
) -> None:
    need_root()
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    served.write(0, b"before" * 100)
    kill = KillAgentAfterFreeze(agent.pid)
    with pytest.raises(QuiesceFailed, match="deleted again.*nothing was left behind") as err:
        take(open_target(disk_dir), "dead", f"unix:{agent.socket}", faults=kill)
    assert not isinstance(err.value, NotConfirmed)
    assert served.snapshot_list() == []
    assert [d["file"] for d in served.info()["layers"]] == ["disk.vmdk"]
    assert served.read(0, 600) == b"before" * 100  # the live state is kept
    served.write(0, b"after!")  # and still takes writes
    assert served.check() == []


def test_a_snapshot_with_much_written_since_is_not_merged_while_serving(
    ext4, start_agent, disk_dir, served, monkeypatch
) -> None:
    need_root()
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    monkeypatch.setattr("host.serve.control.LIVE_MERGE_LIMIT", 0)  # any write since is too much

    class KillAndWrite(KillAgentAfterFreeze):
        def before_thaw(self) -> None:
            served.write(0, b"x" * 4096)  # a client wrote after the switch

    with pytest.raises(NotConfirmed, match="could not be deleted.*recorded as crash"):
        take(open_target(disk_dir), "dead", f"unix:{agent.socket}", faults=KillAndWrite(agent.pid))
    assert load_snapshot(disk_dir, "dead")["consistency"] == "crash"


def test_restore_artifacts_writes_the_label_into_a_data_directory(
    disk_dir, short_tmp, capsys
) -> None:
    label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
    with Disk.open(disk_dir) as d:
        d.snapshot_create(
            "pg",
            consistency="application",
            artifacts={
                "postgres:main": {
                    "backup_label": label,
                    "tablespace_map": "",
                    "start_lsn": "0/2000028",
                }
            },
        )
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
