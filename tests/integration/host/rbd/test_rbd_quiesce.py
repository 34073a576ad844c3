"""``snapshot create rbd:POOL/GROUP NAME --quiesce``: a real agent freezing ext4 filesystems
that live on the group's RBD images (served by QEMU's rbd driver), the record read back by
another host, and the faults: the agent unreachable, a member image that another client
holds locked (the group snapshot fails part-way, after the freeze)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from host.snapshots.cycle import QuiesceFailed, take
from host.snapshots.rbd import RbdStore, RbdTarget
from host.snapshots.rbd_cluster import RbdError
from tests.helpers.ceph import OtherClient
from tests.helpers.env import REPO, need_root
from tests.helpers.freeze import frozen_now
from tests.helpers.hostcli import run_cli
from tests.helpers.rbdfs import RbdDisks

pytestmark = [pytest.mark.ceph, pytest.mark.root]


@pytest.fixture
def vm_disks(make_vm):  # type: ignore[no-untyped-def]
    """A group of four images; ext4 on the first three, served by one qemu-storage-daemon
    (the VM); the fourth stays unused by the guest."""
    need_root()
    vm = make_vm(images=4)
    disks = RbdDisks(vm.cluster, vm.images[:3])
    try:
        disks.start().mkfs().mount()
        yield vm, disks
    finally:
        disks.remove()


def fs_agent(agent_factory, disks: RbdDisks):  # type: ignore[no-untyped-def]
    return agent_factory({"filesystems": {"mounts": [str(m) for m in disks.mounts.values()]}})


def test_a_quiesced_group_snapshot_records_the_agents_report_for_any_host(
    vm_disks, agent_factory, capsys
) -> None:
    vm, disks = vm_disks
    for name, mnt in disks.mounts.items():
        (mnt / "data").write_text(f"{name} before\n")
    agent = fs_agent(agent_factory, disks)
    rc = run_cli(["snapshot", "create", vm.spec(), "q1", "--quiesce", f"unix:{agent.socket}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "consistency: filesystem" in out and "held window" in out
    assert not any(frozen_now(str(m)) for m in disks.mounts.values())
    assert vm.group_snaps() == ["q1"]
    # another host: a client process of its own, which knows only the cluster
    other = subprocess.run(
        [sys.executable, "-m", "host.cli", "snapshot", "show", vm.spec(), "q1", "--json"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    record = json.loads(other.stdout)
    assert record["consistency"] == "filesystem" and record["recorded"]
    host = record["report"]["host"]
    assert host["confirmed"] and host["state"] == "done"
    assert [e["event"] for e in host["events"]] == [
        "ping", "freeze_sent", "frozen", "switch_start", "switch_end", "thaw_sent", "thawed",
    ]  # fmt: skip
    assert host["switch"]["images"] == 4 and host["switch"]["cut_ms"] > 0
    writers = record["report"]["agent"]["writers"]
    assert [w["state"] for w in writers] == ["thawed"]
    assert sorted(record["images"]) == vm.images


def test_unreachable_agent_required_leaves_no_rbd_snapshot(make_vm, short_tmp) -> None:
    vm = make_vm(images=2)
    t0 = time.monotonic()
    with pytest.raises(QuiesceFailed, match="unreachable.*no snapshot was taken"):
        take(RbdTarget(RbdStore(vm.spec())), "nope", f"unix:{short_tmp}/none.sock")
    assert time.monotonic() - t0 < 6
    assert vm.group_snaps() == [] and all(vm.image_snaps(i) == [] for i in vm.images)
    with RbdStore(vm.spec()) as store:
        assert store.records.all() == {}


def test_unreachable_agent_preferred_records_a_crash_snapshot_loudly(
    make_vm, short_tmp, capsys
) -> None:
    vm = make_vm(images=2)
    argv = ["snapshot", "create", vm.spec(), "fallback", "--quiesce", f"unix:{short_tmp}/x.sock"]
    assert run_cli([*argv, "--quiesce-mode", "preferred"]) == 1
    assert "QUIESCE FAILED, falling back to a crash-consistent" in capsys.readouterr().err
    assert vm.group_snaps() == ["fallback"]
    with RbdStore(vm.spec()) as store:
        snap = store.snapshot("fallback")
    assert snap["consistency"] == "crash"
    assert "unreachable" in snap["report"]["host"]["fallback"]


def test_a_group_snapshot_failing_part_way_thaws_the_guest_and_records_nothing(
    vm_disks, agent_factory
) -> None:
    vm, disks = vm_disks
    agent = fs_agent(agent_factory, disks)
    locked = vm.images[3]  # held by a client that never hands its exclusive lock over
    with OtherClient(vm.cluster, locked, "exclusive"):
        t0 = time.monotonic()
        with pytest.raises(RbdError, match="does not hand its exclusive lock over"):
            take(RbdTarget(RbdStore(vm.spec())), "partial", f"unix:{agent.socket}")
        assert time.monotonic() - t0 < 10  # EROFS at once, not a wait for the lock
    assert not any(frozen_now(str(m)) for m in disks.mounts.values())
    status = agent.call("status")["return"]
    assert status["state"] == "idle"
    assert status["last_report"]["outcome"] == "aborted"
    assert vm.group_snaps() == [] and all(vm.image_snaps(i) == [] for i in vm.images)
    with RbdStore(vm.spec()) as store:
        assert store.records.all() == {}
    (disks.mounts[vm.images[0]] / "still-writable").write_text("yes")  # the guest runs on
