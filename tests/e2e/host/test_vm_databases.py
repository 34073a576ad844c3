"""A database VM of three disks, snapshotted as one: PostgreSQL with its data directory on
disk 1, ``pg_wal`` on disk 2 and its table in a tablespace on disk 3, MariaDB with its binary
log on disk 2, under insert load; a quiesced VM snapshot, more writes, a VM revert, and both
restart by crash recovery with every row acknowledged before the cut and none sent after.

PostgreSQL's documentation asks that snapshots of volumes holding parts of one cluster be
"simultaneous": the second test leaves disk 2's filesystem out of the guest freeze, so only
the one cut over all disks makes the restored cluster consistent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.engine.vm import VM
from host.lab.demo import judge
from host.lab.load import present_ids, start_loads
from host.snapshots.cycle import take
from host.snapshots.target import ServedTarget, open_target
from tests.helpers.disks import need_qemu
from tests.helpers.env import need, need_root
from tests.helpers.vmlab import DISKS, VmLab
from tests.helpers.vms import qemu_judges_every_disk

pytestmark = [pytest.mark.root, pytest.mark.pg, pytest.mark.mysql, pytest.mark.slow]


@pytest.fixture
def lab() -> Iterator[VmLab]:
    need_root()
    from host.lab.local import missing_requirements

    missing = missing_requirements()
    need(not missing, "; ".join(missing))
    vm_lab = VmLab()
    try:
        vm_lab.build()
        yield vm_lab
    finally:
        vm_lab.close()


def cut_revert_and_judge(lab: VmLab, endpoint: str, tmp: Path) -> dict[str, object]:
    """Load, a quiesced snapshot of the served VM, load, revert the VM, restart, verdicts."""
    where = lab.pg.sql("SELECT pg_relation_filepath('demo_rows')")[0][0]
    assert where.startswith("pg_tblspc/")  # the table on disk 3, its index on disk 1
    assert (lab.pg.datadir / "pg_wal").resolve().parent == lab.mounts["wal"]
    assert list(lab.binlog_dir.glob("binlog.0*"))  # MariaDB's binary log on disk 2
    loads = start_loads(lab, rate=100)  # type: ignore[arg-type]  # reads pg and maria
    time.sleep(2)
    target = open_target(lab.vm)
    assert isinstance(target, ServedTarget)  # the VM's server cuts every disk
    outcome = take(target, "cut", endpoint)
    time.sleep(2)
    for load in loads:
        load.stop()
    assert not [ld.error for ld in loads if ld.error]
    assert outcome.confirmed
    switch = outcome.host["switch"]
    assert set(switch["disks"]) == set(DISKS) and switch["paused_ms"] >= 0
    lab.take_down()
    with VM.open(lab.vm) as vm:
        assert vm.snapshot_get("cut")["report"]["host"]["switch"]["disks"].keys() == set(DISKS)
        vm.snapshot_revert("cut")
        assert vm.check() == []
        qemu_judges_every_disk(vm, tmp)
    lab.bring_up()
    present = present_ids(lab)  # type: ignore[arg-type]
    m = outcome.moments
    verdicts = {
        ld.name: judge(ld.name, ld.rows, ld.sent, present[ld.name], m["frozen"], m["thawed"])
        for ld in loads
    }
    for v in verdicts.values():
        assert v.ok, v.line()
        assert v.before > 20 and v.after > 20, v.line()  # rows on both sides of the cut
    assert "redo" in lab.pg.log_text()  # PostgreSQL restarted by crash recovery
    return {"consistency": outcome.consistency, "verdicts": verdicts}


def test_a_quiesced_vm_snapshot_restores_both_databases(lab: VmLab, start_agent, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_qemu()
    agent = start_agent(lab.agent_config(list(DISKS)))
    got = cut_revert_and_judge(lab, f"unix:{agent.socket}", tmp_path)
    assert got["consistency"] == "application"


def test_the_one_cut_restores_postgresql_when_the_freeze_leaves_the_wal_disk_out(
    lab: VmLab, start_agent, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    need_qemu()
    agent = start_agent(lab.agent_config(["data", "space"]))  # pg_wal and binlog not frozen
    cut_revert_and_judge(lab, f"unix:{agent.socket}", tmp_path)
