"""The VM demo's scenario in a real QEMU guest: both databases under load from the host, a
quiesced snapshot of the engine VM (both disks at one cut) through the virtio-serial chardev,
power off, a VM revert, boot again, and every acknowledged row before the cut present and
none after it; the agent froze the guest's data disk and nothing else; the lab is gone
afterwards. Two boots under TCG: about two minutes."""

from __future__ import annotations

import pytest

from host.lab.demo import SNAPSHOT, Clock
from host.lab.image import GuestImage
from host.lab.vmdemo import scenario
from host.lab.vmlab import VMLab
from host.snapshots.target import load_snapshot
from tests.vm.lab.helpers import assert_gone


def test_the_vm_demo_keeps_every_row_before_the_snapshot_and_none_after(
    guest_image: GuestImage, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = VMLab(guest_image, say=print)
    try:
        verdicts, outcome, boots = scenario(lab, Clock(), seconds=3.0, rate=50.0)
        for v in verdicts:
            assert v.ok, v.line()
            assert v.before > 10 and v.after > 10  # rows on both sides of the cut
        assert outcome.confirmed and outcome.consistency == "application"
        writers = {w["name"]: w for w in outcome.agent["writers"]}
        assert set(writers) == {"mysql:main", "postgres:main", "filesystems:listed"}
        assert all(w["state"] == "thawed" for w in writers.values())
        said = [str(m) for m in writers["filesystems:listed"]["messages"]]
        froze = [m[m.index("froze ") :] for m in said if "froze " in m]
        assert froze == ["froze /srv/data"], said  # the data disk, never the guest's root
        artifacts = outcome.record()["artifacts"]
        assert artifacts["postgres:main"]["backup_label"].startswith("START WAL LOCATION")
        assert artifacts["mysql:main"]["binlog_file"]
        # one cut of the VM: its record names a layer of both disks, each disk's I/O paused
        record = load_snapshot(lab.vm_folder, SNAPSHOT)
        assert record["consistency"] == "application"
        assert set(record["layers"]) == {"root", "data"}
        switch = outcome.host["switch"]
        assert set(switch["disks"]) == {"root", "data"}
        for disk in switch["disks"].values():
            assert 0 < disk["paused_ms"] <= switch["paused_ms"]
        assert [b.number for b in boots] == [1, 2]
        for boot in boots:
            assert list(boot.marks)[-4:] == ["data disk", "agent", "PostgreSQL", "MariaDB"]
        out = capsys.readouterr().out
        assert "PostgreSQL: crash recovery from the snapshot" in out
        assert "MariaDB: InnoDB crash recovery from the snapshot" in out
        print(out)  # the demo's own output, for the log of a failure
    finally:
        lab.close()
    assert_gone(lab.root)
