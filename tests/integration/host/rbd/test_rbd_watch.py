"""``quiesce-host rbd-watch``: another tool's ``rbd snap create`` / ``rbd group snap create``
of the VM's images freezes the guest first (librbd's quiesce notification), and the snapshot
is recorded with the agent's report; a failed freeze fails the snapshot (required) or lets
it through as crash-consistent (preferred)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from host.snapshots.rbd import ImageInUse, RbdStore
from tests.helpers.env import REPO, need_root
from tests.helpers.freeze import frozen_now
from tests.helpers.hostcli import run_cli
from tests.helpers.rbdfs import RbdDisks

pytestmark = [pytest.mark.ceph, pytest.mark.root]


class WatchProcess:
    """``quiesce-host rbd-watch`` in its own process, its output lines collected."""

    def __init__(self, spec: str, endpoint: str, mode: str = "required") -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host.cli", "rbd-watch", spec, "--quiesce", endpoint,
             "--quiesce-mode", mode],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        assert self.wait_for("watching"), self.text()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float = 15.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def text(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture
def watched(make_vm, agent_factory):  # type: ignore[no-untyped-def]
    """A VM of three images with ext4 on each, its agent, and rbd-watch on its group."""
    need_root()
    vm = make_vm(images=3)
    disks = RbdDisks(vm.cluster, vm.images)
    watchers: list[WatchProcess] = []
    try:
        disks.start().mkfs().mount()
        agent = agent_factory({"filesystems": {"mounts": [str(m) for m in disks.mounts.values()]}})

        def watch(mode: str = "required") -> WatchProcess:
            watchers.append(WatchProcess(vm.spec(), f"unix:{agent.socket}", mode))
            return watchers[-1]

        yield vm, disks, agent, watch
    finally:
        for w in watchers:
            if w.proc.poll() is None:
                w.stop()
        disks.remove()


def rbd_cli(vm, *argv: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """Ceph's own ``rbd`` command: "any tool"."""
    return subprocess.run(["rbd", "-c", str(vm.cluster.conf), *argv], capture_output=True,
                          text=True, timeout=120, start_new_session=True)  # fmt: skip


def test_anybodys_group_snapshot_is_quiesced_and_recorded(watched) -> None:
    vm, disks, agent, watch = watched
    w = watch()
    done = rbd_cli(vm, "group", "snap", "create", f"{vm.cluster.pool}/{vm.group}@by-cron")
    assert done.returncode == 0, done.stderr
    assert w.wait_for(f"recorded {vm.group}@by-cron as filesystem"), w.text()
    assert "frozen in" in w.text() and w.text().count("answered 0") == 3  # one freeze
    assert agent.call("status")["return"]["last_report"]["label"].startswith("rbd-watch")
    assert not any(frozen_now(str(m)) for m in disks.mounts.values())
    with RbdStore(vm.spec()) as store:
        snap = store.snapshot("by-cron")
    assert snap["consistency"] == "filesystem" and snap["quiesced_by"] == "rbd-watch"
    assert snap["report"]["host"]["confirmed"]
    # an image's own snapshot is quiesced too, and recorded on that image
    image = vm.images[1]
    done = rbd_cli(vm, "snap", "create", f"{vm.cluster.pool}/{image}@one")
    assert done.returncode == 0, done.stderr
    assert w.wait_for(f"recorded {image}@one as filesystem"), w.text()
    with RbdStore(vm.spec(image)) as store:
        assert store.snapshot("one")["consistency"] == "filesystem"
    # our own quiesced snapshot skips librbd's notification: rbd-watch is not asked
    before = len(w.lines)
    rc = run_cli(["snapshot", "create", vm.spec(), "ours", "--quiesce", f"unix:{agent.socket}"])
    assert rc == 0
    time.sleep(0.5)
    assert not any("quiesce" in line for line in w.lines[before:]), w.text()
    # rbd-watch holds the images open: a revert is refused until it (and the VM) stop
    disks.stop()
    with RbdStore(vm.spec()) as store, pytest.raises(ImageInUse, match="open by client"):
        store.snapshot_revert("by-cron")
    assert w.stop() == 0
    assert run_cli(["snapshot", "revert", vm.spec(), "by-cron"]) == 0


def test_a_failed_freeze_fails_the_snapshot_when_required(watched) -> None:
    vm, disks, agent, watch = watched
    w = watch("required")
    agent.stop()
    t0 = time.monotonic()
    done = rbd_cli(vm, "group", "snap", "create", f"{vm.cluster.pool}/{vm.group}@nope")
    assert done.returncode != 0 and "Input/output error" in done.stderr
    assert time.monotonic() - t0 < 10  # the answer came at once, no 50 s of retries
    assert vm.group_snaps() == []
    assert "answered -5" in w.text()


def test_a_failed_freeze_lets_the_snapshot_through_as_crash_when_preferred(watched) -> None:
    vm, disks, agent, watch = watched
    w = watch("preferred")
    agent.stop()
    done = rbd_cli(vm, "group", "snap", "create", f"{vm.cluster.pool}/{vm.group}@anyway")
    assert done.returncode == 0, done.stderr
    assert w.wait_for(f"recorded {vm.group}@anyway as crash"), w.text()
    with RbdStore(vm.spec()) as store:
        snap = store.snapshot("anyway")
    assert snap["consistency"] == "crash"
    assert "the freeze failed" in snap["report"]["host"]["fallback"]
