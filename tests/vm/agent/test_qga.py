"""``quiesce-host --quiesce qemu-ga:unix:PATH`` against the guest's real qemu-ga, and a
qemu-ga path that tells the truth (issue 11, items 7 and 9): with our bridge as qemu-ga's
hook the snapshot is ``application``, without it ``filesystem``; a guest already frozen is
refused; with the agent stopped the freeze fails, with the bridge as the hook and through
the stock hook folder (our master hook)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import protocol
from host.engine.disk import Disk
from host.snapshots.cycle import Outcome, QuiesceFailed, take
from host.snapshots.qga import HINTS
from host.snapshots.target import open_target
from tests.helpers.guest import BRIDGE_HOOK, DATA, MASTER_HOOK, SCRIPTS, Guest


@pytest.fixture
def disk(guest: Guest) -> Iterator[Path]:
    folder = guest.run_dir / f"disk-{time.monotonic_ns()}"
    Disk.create(folder, 16 << 20).close()
    yield folder


def snapshot(guest: Guest, disk: Path, name: str) -> Outcome:
    target = open_target(disk)
    try:
        return take(target, name, guest.qga_endpoint, mountpoints=[DATA])
    finally:
        target.close()


def qga(guest: Guest, command: str, arguments: dict[str, object] | None = None) -> object:
    """One qemu-ga command on a fresh, synced connection."""
    with protocol.Client(f"unix:{guest.vm.qga_socket}", 5.0, hints=HINTS) as c:
        c.sync_delimited()
        return c.call(command, arguments, timeout=120.0)


def test_with_the_bridge_as_its_hook_qemu_ga_gives_an_application_snapshot(
    guest: Guest, disk: Path
) -> None:
    guest.sh(f"printf '#!/bin/sh\\nexit 0\\n' > {SCRIPTS}/10-app && chmod 755 {SCRIPTS}/10-app")
    try:
        out = snapshot(guest, disk, "qga-app")
    finally:
        guest.sh(f"rm -f {SCRIPTS}/10-app")
    assert out.confirmed and out.consistency == "application", (out.warnings, out.agent)
    assert out.agent is not None
    names = [w["name"] for w in out.agent["writers"]]
    assert names[0] == "qemu-ga:filesystems" and any(n.startswith("scripts") for n in names)
    assert qga(guest, "guest-fsfreeze-status") == "thawed"
    assert guest.writable()


def test_without_our_hook_qemu_ga_gives_a_filesystem_snapshot(guest: Guest, disk: Path) -> None:
    guest.qga_hook(None)
    out = snapshot(guest, disk, "qga-fs")
    assert out.confirmed and out.consistency == "filesystem", (out.warnings, out.agent)
    assert out.agent is not None
    assert any("qemu-ga only" in n for n in out.agent["notes"]), out.agent["notes"]
    assert guest.writable()


def test_a_guest_already_frozen_is_refused_and_left_as_it_was(guest: Guest, disk: Path) -> None:
    assert qga(guest, "guest-fsfreeze-freeze-list", {"mountpoints": [DATA]}) == 1
    try:
        with pytest.raises(QuiesceFailed, match="qemu-ga is busy.*already frozen"):
            snapshot(guest, disk, "qga-busy")
        assert qga(guest, "guest-fsfreeze-status") == "frozen"  # someone else's: not touched
    finally:
        qga(guest, "guest-fsfreeze-thaw")
    with Disk.open(disk) as d:
        assert d.info()["depth"] == 0
    assert guest.writable()


def test_with_the_agent_stopped_the_qemu_ga_freeze_fails(guest: Guest, disk: Path) -> None:
    """Through the stock hook folder (our master hook), then with the bridge as the hook."""
    guest.sh("systemctl stop quiesce-agent")
    try:
        for hook in (MASTER_HOOK, BRIDGE_HOOK):
            guest.qga_hook(hook)
            with pytest.raises(protocol.Refused, match="hook"):
                qga(guest, "guest-fsfreeze-freeze-list", {"mountpoints": [DATA]})
            with pytest.raises(QuiesceFailed, match="freeze failed"):  # as quiesce-host sees it
                snapshot(guest, disk, f"qga-stopped-{hook.rsplit('/', 1)[-1]}")
            assert qga(guest, "guest-fsfreeze-status") == "thawed"
            assert guest.writable()
    finally:
        guest.sh("systemctl start quiesce-agent", timeout=120)
        guest.vm.wait_agent(120)
    with Disk.open(disk) as d:
        assert d.info()["depth"] == 0
