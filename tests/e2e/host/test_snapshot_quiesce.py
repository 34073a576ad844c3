"""``snapshot create --quiesce`` against a real agent freezing a loop-mounted ext4 it was
given, and the faults: unreachable, killed mid-freeze, no thaw in time, a failing writer."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.snapshots.cycle import Faults, QuiesceFailed, take
from host.snapshots.target import load_snapshot, open_target
from tests.helpers.env import need_root
from tests.helpers.freeze import frozen_now
from tests.helpers.hostcli import make_scripts, run_cli, snapshots, write_script

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def fs_agent(start_agent, fs, **freeze):  # type: ignore[no-untyped-def]
    config = {"filesystems": {"mounts": [fs.path]}}
    if freeze:
        config["freeze"] = freeze
    return start_agent(config)


def cycle(
    disk_dir: Path, name: str, endpoint: str, mode: str = "required", faults: Faults | None = None
):  # type: ignore[no-untyped-def]
    target = open_target(disk_dir)
    try:
        return take(target, name, endpoint, mode=mode, faults=faults)
    finally:
        target.close()


def test_a_quiesced_snapshot_records_its_level_report_and_window(
    ext4, start_agent, disk_dir, deltas
) -> None:
    agent = fs_agent(start_agent, ext4)
    with Disk.open(disk_dir) as d:
        d.write(0, b"before" * 100)
    out = cycle(disk_dir, "q1", f"unix:{agent.socket}")
    assert out.confirmed and out.consistency == "filesystem" and not out.warnings
    assert not frozen_now(ext4.path)
    snap = load_snapshot(disk_dir, "q1")
    assert snap["consistency"] == "filesystem"
    host = snap["report"]["host"]
    assert host["confirmed"] and host["state"] == "done"
    split = host["split"]
    assert all(split[k] is not None for k in ("prepare_ms", "lock_ms", "switch_ms", "release_ms"))
    assert host["window_ms"] >= split["switch_ms"] + split["release_ms"]
    # how long clients were blocked, and the thaw sent straight after the cut
    assert 0 < host["agent_blocked_ms"] <= host["window_ms"]
    assert host["agent_held_ms"] <= host["agent_blocked_ms"]
    assert 0 <= host["cut_to_thaw_ms"] < host["window_ms"]
    events = [e["event"] for e in host["events"]]
    assert events == [
        "ping",
        "freeze_sent",
        "frozen",
        "switch_start",
        "switch_end",
        "thaw_sent",
        "thawed",
    ]
    writers = snap["report"]["agent"]["writers"]
    assert [w["state"] for w in writers] == ["thawed"]
    assert deltas(disk_dir) == ["disk-000001.vmdk"]
    with Disk.open(disk_dir) as d:  # the snapshot holds what was written before it
        d.write(0, b"after!" * 100)
        assert d.read(0, 6) == b"after!"
        d.snapshot_revert("q1")
        assert d.read(0, 6) == b"before"


def test_the_cli_creates_and_shows_it(ext4, start_agent, disk_dir, capsys) -> None:
    agent = fs_agent(start_agent, ext4)
    rc = run_cli(["snapshot", "create", str(disk_dir), "cli1", "--quiesce", f"unix:{agent.socket}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "consistency: filesystem" in out and "snapshot switched" in out
    assert "clients blocked (first lock -> last lock released" in out
    assert "ms after the cut)" in out and "thaw arrived at the agent" in out
    assert run_cli(["snapshot", "show", str(disk_dir), "cli1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["consistency"] == "filesystem"
    assert run_cli(["snapshot", "show", str(disk_dir), "cli1"]) == 0
    shown_text = capsys.readouterr().out
    assert "held window" in shown_text and "clients blocked" in shown_text


def test_unreachable_agent_required_fails_and_leaves_nothing(disk_dir, short_tmp, deltas) -> None:
    t0 = time.monotonic()
    with pytest.raises(QuiesceFailed, match="unreachable.*no snapshot was taken"):
        cycle(disk_dir, "nope", f"unix:{short_tmp}/none.sock")
    assert time.monotonic() - t0 < 6
    assert snapshots(disk_dir) == [] and deltas(disk_dir) == []


def test_unreachable_agent_preferred_gives_crash_loudly(disk_dir, short_tmp, capsys) -> None:
    rc = run_cli(
        [
            "snapshot",
            "create",
            str(disk_dir),
            "fallback",
            "--quiesce",
            f"unix:{short_tmp}/none.sock",
            "--quiesce-mode",
            "preferred",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert "WARNING: QUIESCE FAILED, falling back to a crash-consistent" in captured.err
    snap = load_snapshot(disk_dir, "fallback")
    assert snap["consistency"] == "crash"
    assert "unreachable" in snap["report"]["host"]["fallback"]


def test_agent_killed_mid_freeze_fails_cleanly_and_thaws(
    ext4, start_agent, short_tmp, disk_dir, deltas
) -> None:
    # a script that takes 3 s to freeze keeps the agent in FREEZING; kill the agent while it
    # runs: the host must see the connection drop at once, not wait out its bound
    trace = short_tmp / "trace"
    make_scripts(short_tmp / "scripts", trace, ["10-slow"], sleep="10-slow", seconds=3)
    agent = start_agent(
        {
            "filesystems": {"mounts": [ext4.path]},
            "scripts": {"dir": str(short_tmp / "scripts"), "legacy_dir": None},
        }
    )

    def killer() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "10-slow freeze" not in _read(trace):
            time.sleep(0.02)
        os.kill(agent.pid, signal.SIGKILL)

    threading.Thread(target=killer, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(QuiesceFailed, match="did not complete.*connection was lost"):
        cycle(disk_dir, "killed", f"unix:{agent.socket}")
    assert time.monotonic() - t0 < 3
    assert snapshots(disk_dir) == [] and deltas(disk_dir) == []
    assert not frozen_now(ext4.path)


def test_agent_killed_after_freezing_deletes_the_snapshot_in_required_mode(
    ext4, start_agent, disk_dir, deltas
) -> None:
    agent = fs_agent(start_agent, ext4)

    class Kill(Faults):
        def after_freeze(self) -> None:
            os.kill(agent.pid, signal.SIGKILL)

    with pytest.raises(QuiesceFailed, match="thaw was not confirmed.*deleted again"):
        cycle(disk_dir, "dead", f"unix:{agent.socket}", faults=Kill())
    assert snapshots(disk_dir) == []
    with Disk.open(disk_dir) as d:
        assert d.info()["depth"] == 0
    deadline = time.monotonic() + 5
    while frozen_now(ext4.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not frozen_now(ext4.path), "the guard did not thaw after the agent died"


def test_no_thaw_before_the_ceiling_is_reported_inconsistent(ext4, start_agent, disk_dir) -> None:
    agent = fs_agent(start_agent, ext4, ceiling_seconds=2, timeout_seconds=1)

    class Stall(Faults):
        def before_thaw(self) -> None:
            time.sleep(2.5)  # the host "forgets" the thaw; the agent's ceiling thaws

    out = cycle(disk_dir, "late", f"unix:{agent.socket}", mode="preferred", faults=Stall())
    assert not out.confirmed and out.consistency == "crash"
    assert any("NotConsistent" in w for w in out.warnings)
    snap = load_snapshot(disk_dir, "late")
    assert snap["consistency"] == "crash"
    assert snap["report"]["agent"]["ceiling_hit"] is True
    with pytest.raises(QuiesceFailed, match="NotConsistent.*deleted again"):
        cycle(disk_dir, "late2", f"unix:{agent.socket}", faults=Stall())
    assert [s["name"] for s in snapshots(disk_dir)] == ["late"]


def test_a_writer_failing_during_freeze_gets_freezefail_and_no_snapshot(
    ext4, start_agent, short_tmp, disk_dir, deltas
) -> None:
    trace = short_tmp / "trace"
    make_scripts(short_tmp / "scripts", trace, ["10-ok", "20-bad"], fail="20-bad")
    agent = start_agent(
        {
            "filesystems": {"mounts": [ext4.path]},
            "scripts": {"dir": str(short_tmp / "scripts"), "legacy_dir": None},
        }
    )
    with pytest.raises(QuiesceFailed, match="rolled back.*20-bad.*cannot lock") as info:
        cycle(disk_dir, "bad", f"unix:{agent.socket}")
    assert _read(trace).split("\n")[:-1] == ["10-ok freeze", "20-bad freeze", "10-ok freezeFail"]
    states = {w["name"]: w["state"] for w in info.value.report["writers"]}
    assert states["scripts:20-bad"] == "failed"
    assert snapshots(disk_dir) == [] and deltas(disk_dir) == []
    assert not frozen_now(ext4.path)
    out = cycle(disk_dir, "bad-pref", f"unix:{agent.socket}", mode="preferred")
    assert out.consistency == "crash" and "20-bad" in out.warnings[0]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_failed_release_keeps_the_snapshot_at_the_level_that_held(
    ext4, start_agent, short_tmp, disk_dir
) -> None:
    folder = short_tmp / "scripts"
    write_script(folder, "10-app", '[ "$1" = thaw ] && { echo "restart failed" >&2; exit 3; }\n')
    agent = start_agent(
        {
            "filesystems": {"mounts": [ext4.path]},
            "scripts": {"dir": str(folder), "legacy_dir": None},
        }
    )
    out = cycle(disk_dir, "thawfail", f"unix:{agent.socket}")
    # the hold was intact through the switch; the script's level no longer counts
    assert out.confirmed and out.consistency == "filesystem"
    assert "thaw finished with errors" in out.warnings[0]
    assert load_snapshot(disk_dir, "thawfail")["consistency"] == "filesystem"
    assert not frozen_now(ext4.path)


def test_a_release_that_runs_past_the_ceiling_keeps_a_snapshot_taken_in_time(
    ext4, start_agent, short_tmp, disk_dir
) -> None:
    """The thaw came well inside the ceiling; a thaw script then outlived it. The snapshot was
    taken while everything held, so required mode keeps it, and the report shows the late
    release."""
    folder = short_tmp / "scripts"
    write_script(folder, "10-app", '[ "$1" = thaw ] && sleep 3\n')
    agent = start_agent(
        {
            "freeze": {"ceiling_seconds": 2, "timeout_seconds": 1},
            "filesystems": {"mounts": [ext4.path]},
            "scripts": {"dir": str(folder), "legacy_dir": None},
        }
    )
    out = cycle(disk_dir, "slow-release", f"unix:{agent.socket}")
    assert out.confirmed and out.consistency == "application" and not out.warnings
    agent_report = load_snapshot(disk_dir, "slow-release")["report"]["agent"]
    assert agent_report["released_late"] is True and agent_report["ceiling_hit"] is False
    assert agent_report["timings"]["blocked_ms"] >= 3000  # the late release is in the figure
    assert not frozen_now(ext4.path)
