"""The issue's scenario on Ceph: PostgreSQL (data on one image, its WAL on a second) and
MariaDB (a third) under an insert load, a quiesced group snapshot, more writes, the VM
stopped, a group rollback, the VM started again, and the row verdict: every row acknowledged
before the freeze reply is back, none sent after the thaw reply is."""

from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import pytest

from host.lab.databases import chown_tree
from host.lab.demo import judge
from host.lab.load import create_tables, present_ids, start_loads
from host.snapshots.cycle import take
from host.snapshots.rbd import RbdStore, RbdTarget
from tests.helpers.env import need_root
from tests.helpers.hostcli import run_cli
from tests.helpers.rbdfs import RbdDisks

pytestmark = [pytest.mark.ceph, pytest.mark.root, pytest.mark.pg, pytest.mark.mysql]
pytestmark.append(pytest.mark.slow)

MiB = 1 << 20


def test_databases_on_three_images_restore_from_a_quiesced_group_snapshot(
    make_vm, pg_factory, maria_factory, agent_factory, tmp_path
) -> None:
    need_root()
    vm = make_vm(images=3, size=192 * MiB)
    disks = RbdDisks(vm.cluster, vm.images)
    data, wal, maria_disk = (disks.mounts[n] for n in vm.images)
    servers: list[object] = []
    try:
        disks.start().mkfs().mount()
        pg = pg_factory(datadir=data / "pg", archive=False)
        shutil.move(pg.datadir / "pg_wal", wal / "pg_wal")  # the WAL on its own disk
        (pg.datadir / "pg_wal").symlink_to(wal / "pg_wal")
        chown_tree(wal / "pg_wal", pg.owner)
        servers.append(pg.start())
        maria = maria_factory(datadir=maria_disk / "mysql")
        servers.append(maria.start())
        lab = SimpleNamespace(pg=pg, maria=maria)
        create_tables(lab)  # type: ignore[arg-type]
        agent = agent_factory(
            {
                "filesystems": {"mounts": [str(m) for m in disks.mounts.values()]},
                "postgres": [{"name": "pg", "dsn": pg.dsn}],
                "mysql": [{"name": "maria", "unix_socket": maria.socket, "user": maria.user}],
            }
        )
        loads = start_loads(lab, rate=100.0)  # type: ignore[arg-type]
        time.sleep(1.5)
        outcome = take(RbdTarget(RbdStore(vm.spec())), "app", f"unix:{agent.socket}")
        assert outcome.confirmed and outcome.consistency == "application", outcome.warnings
        time.sleep(1.5)  # more writes, which the rollback must take away
        for load in loads:
            load.stop()
            assert load.error is None, load.error
        # the VM stops: databases, filesystems, its librbd client
        pg.stop("immediate")
        maria.kill()
        disks.stop()
        assert run_cli(["snapshot", "revert", vm.spec(), "app"]) == 0
        disks.start().mount()  # ... and boots from the rolled-back images
        pg.drop_stale_pid()
        pg.start()
        maria.start()
        present = present_ids(lab)  # type: ignore[arg-type]
        m = outcome.moments
        for load in loads:
            verdict = judge(
                load.name, load.rows, load.sent, present[load.name], m["frozen"], m["thawed"]
            )
            assert verdict.ok, verdict.line()
            assert verdict.after > 0  # there were writes to take away
        with RbdStore(vm.spec()) as store:
            record = store.snapshot("app")
        assert record["consistency"] == "application"
        assert {"postgres:pg", "mysql:maria"} <= set(record["artifacts"])
        assert "backup_label" in record["artifacts"]["postgres:pg"]
        restored = tmp_path / "pgdata"  # the WAL-archive restore path reads it from Ceph too
        restored.mkdir()
        (restored / "PG_VERSION").write_text("15\n")
        rc = run_cli(["snapshot", "restore-artifacts", vm.spec(), "app", str(restored)])
        assert rc == 0
        label = (restored / "backup_label").read_text()
        assert label == record["artifacts"]["postgres:pg"]["backup_label"]
    finally:
        for server in servers:  # off the filesystems before they are unmounted
            server.remove()  # type: ignore[attr-defined]
        disks.remove()
