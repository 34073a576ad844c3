"""A freeze bound to its host, on a real virtio-serial port (issue 11, items 3, 4, 8):
quiesce-host killed mid-freeze, Ctrl-C'd mid-freeze, and the agent killed while frozen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import protocol
from host.engine.disk import Disk
from host.snapshots.cycle import QuiesceFailed, take
from host.snapshots.target import open_target
from tests.helpers.guest import Guest, KillAgentWhenFrozen
from tests.helpers.waiting import wait_until

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def disk(guest: Guest) -> Iterator[Path]:
    """An engine disk on the host for the snapshots (what is cut does not matter here)."""
    folder = guest.run_dir / f"disk-{time.monotonic_ns()}"
    Disk.create(folder, 16 << 20).close()
    yield folder


def status(guest: Guest) -> protocol.Status:
    with protocol.Client(guest.vm.agent_endpoint, 5.0) as c:
        return c.status()


def idle_within(guest: Guest, timeout: float) -> float | None:
    """Seconds until the agent says idle (it replies once its release is done), or None."""
    t0 = time.monotonic()
    ok = wait_until(lambda: status(guest)["state"] == "idle", timeout, poll=0.05)
    return time.monotonic() - t0 if ok else None


def driver(disk: Path, guest: Guest, name: str) -> subprocess.Popen[str]:
    """quiesce-host's cycle in a process of its own, stopped between the cut and the thaw."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.held_cycle",
            str(disk),
            guest.vm.agent_endpoint,
            name,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "frozen" once the agent froze and the cut is done
    if line.strip() != "frozen":
        rest = proc.communicate(timeout=60)[0]
        pytest.fail(f"the cycle did not reach the cut: {line}{rest}")
    return proc


def test_sigkill_of_quiesce_host_mid_freeze_thaws_the_guest_at_once(
    guest: Guest, disk: Path
) -> None:
    proc = driver(disk, guest, "killed")  # (it holds the chardev: one host at a time)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    took = idle_within(guest, 25.0)  # the ceiling is 30 s: idle well before it, or a failure
    assert took is not None, "the guest was still frozen 25 s after quiesce-host died"
    print(f"SIGKILL of the host -> agent idle (filesystem thawed): {took * 1000:.0f} ms")
    report = status(guest)["last_report"]
    assert report is not None and report["bound"] is True
    assert report["outcome"].startswith("aborted") and not report["ceiling_hit"]
    assert any("went away" in n for n in report["notes"]), report["notes"]
    assert guest.writable()


def test_ctrl_c_mid_freeze_sends_abort_on_the_connection_that_froze(
    guest: Guest, disk: Path
) -> None:
    proc = driver(disk, guest, "interrupted")
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130 and "interrupted" in out, out
    assert "no reply to 'abort'" not in out, out
    print(f"Ctrl-C of the host -> the cycle ended, aborted: {took * 1000:.0f} ms")
    st = status(guest)
    assert st["state"] == "idle"
    assert st["last_report"] is not None and st["last_report"]["outcome"] == "aborted"
    assert guest.writable()


def test_agent_killed_while_frozen_is_reported_at_once_and_leaves_nothing(
    guest: Guest, disk: Path
) -> None:
    old = guest.agent_pid()
    kill = KillAgentWhenFrozen(guest, old)
    target = open_target(disk)
    try:
        with pytest.raises(QuiesceFailed) as failed:
            take(target, "agent-died", guest.vm.agent_endpoint, faults=kill)
        assert kill.killed_at is not None, "the freeze never answered"
        reported = time.monotonic() - kill.killed_at
    finally:
        target.close()
    text = str(failed.value)
    assert "NotConsistent" in text and "died" in text and "deleted again" in text, text
    print(f"agent SIGKILLed while frozen -> the host reported it: {reported * 1000:.0f} ms")
    with Disk.open(disk) as d:  # required mode: nothing left behind
        assert d.info()["depth"] == 0
    assert guest.writable()  # the guard thawed
    guest.vm.wait_agent(120)  # systemd restarted the agent
    assert guest.agent_pid() != old
    journal = guest.sh("journalctl -u quiesce-agent --no-pager -o cat")
    assert "held while frozen follow" in journal, journal[-2000:]
    # logged while frozen, held in the dead daemon's memory: written by the guard
    assert "frozen 'agent-died'" in journal, journal[-2000:]
