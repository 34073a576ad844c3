"""Real FIFREEZE through the daemon, on ext4 and xfs images the test made and mounted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.freeze import Writer, frozen_now

pytestmark = pytest.mark.root


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_a_write_blocks_while_frozen_and_completes_after_thaw(make_fs, start_agent, fstype) -> None:
    fs = make_fs(fstype)
    agent = start_agent({"filesystems": {"mounts": [fs.path]}})
    reply = agent.call("freeze", {"label": "t"})
    assert reply["return"]["outcome"] == "frozen"
    assert reply["return"]["consistency"] == "filesystem"
    app = Writer(fs.path)
    assert not app.done_within(1.0), "a write went through a frozen filesystem"
    assert agent.call("status")["return"]["state"] == "frozen"  # the daemon still answers
    thawed = agent.call("thaw")["return"]
    assert app.done_within(10), "the write did not complete after thaw"
    assert (Path(fs.path) / "probe").read_text() == "x" * 4096
    fsw = thawed["writers"][0]
    assert fsw["state"] == "thawed" and fsw["freeze_ms"] >= 0 and fsw["thaw_ms"] >= 0
    assert thawed["timings"]["held_ms"] >= 1000


def test_the_ceiling_thaws_when_no_thaw_comes(ext4, start_agent) -> None:
    agent = start_agent(
        {
            "filesystems": {"mounts": [ext4.path]},
            "freeze": {"ceiling_seconds": 2, "timeout_seconds": 1},
        }
    )
    agent.call("freeze", {"label": "forgotten"})
    app = Writer(ext4.path)
    assert not app.done_within(0.5)
    assert app.done_within(10), "the ceiling did not thaw"
    assert time.monotonic() - app.started < 4
    late = agent.call("thaw")
    assert late["error"]["class"] == "NotConsistent"
    assert "NOT consistent" in late["error"]["desc"]
    assert not frozen_now(ext4.path)


def test_sigkill_of_the_daemon_while_frozen_leaves_nothing_frozen(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    agent.call("freeze", {"label": "doomed"})
    assert frozen_now(ext4.path)
    os.kill(agent.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while frozen_now(ext4.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not frozen_now(ext4.path), "the guard did not thaw after the daemon died"
    assert "daemon went away" in agent.log()


def test_the_guard_thaws_at_the_ceiling_even_if_the_whole_daemon_is_stopped(
    ext4, start_agent
) -> None:
    # SIGSTOP freezes the daemon, its event loop and its ceiling thread alike
    agent = start_agent(
        {
            "filesystems": {"mounts": [ext4.path]},
            "freeze": {"ceiling_seconds": 2, "timeout_seconds": 1},
        }
    )
    agent.call("freeze", {"label": "stuck"})
    os.kill(agent.pid, signal.SIGSTOP)
    app = Writer(ext4.path)
    assert app.done_within(8), "nothing thawed a stopped daemon's freeze"
    assert time.monotonic() - app.started < 4
    # a daemon that stays stuck past the ceiling is killed, which frees its database sessions
    agent.proc.wait(timeout=20)
    assert agent.proc.returncode == -signal.SIGKILL


def test_a_restarted_daemon_thaws_what_a_dead_one_left(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}}, name="first")
    agent.call("freeze", {"label": "x"})
    guard = [
        p for p in psutil.Process(agent.pid).children() if "agent.guard" in " ".join(p.cmdline())
    ]
    assert len(guard) == 1
    guard[0].send_signal(signal.SIGSTOP)  # no guard to save us this time
    os.kill(agent.pid, signal.SIGKILL)
    agent.proc.wait()
    marker = json.loads((Path(agent.state_dir) / "frozen.json").read_text())
    assert marker["held"] == [ext4.path]
    assert frozen_now(ext4.path)
    # the next instance, with the same state dir, recovers on start
    second = start_agent(
        {"filesystems": {"mounts": [ext4.path]}, "state_dir": agent.state_dir}, name="second"
    )
    assert not frozen_now(ext4.path)
    assert "recovery: thawed" in second.log()
    assert not (Path(agent.state_dir) / "frozen.json").exists()
    guard[0].kill()


def test_nested_mounts_freeze_children_first_and_thaw_parents_first(make_fs, start_agent) -> None:
    parent = make_fs("ext4")
    child_dir = Path(parent.path) / "child"
    child_dir.mkdir()
    image = Path(parent.dir) / "child.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(child_dir)], check=True)
    try:
        agent = start_agent({"filesystems": {"mounts": [parent.path, str(child_dir)]}})
        frozen = agent.call("freeze", {"label": "n"})["return"]
        thawed = agent.call("thaw")["return"]
        msgs = thawed["writers"][0]["messages"]
        froze = [m for m in msgs if m.startswith("froze")]
        thaws = [m for m in msgs if m.startswith("thawed")]
        assert froze == [f"froze {child_dir}", f"froze {parent.path}"]
        assert thaws == [f"thawed {parent.path}", f"thawed {child_dir}"]
        assert frozen["outcome"] == "frozen"
    finally:
        subprocess.run(["umount", str(child_dir)], check=False)


def test_a_filesystem_someone_else_froze_is_reported_and_left_alone(ext4, start_agent) -> None:
    subprocess.run(["fsfreeze", "-f", ext4.path], check=True)
    try:
        agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
        frozen = agent.call("freeze", {"label": "x"})["return"]
        assert any("already frozen by someone else" in m for m in frozen["writers"][0]["messages"])
        agent.call("thaw")
        assert frozen_now(ext4.path), "the agent thawed a freeze it did not make"
    finally:
        subprocess.run(["fsfreeze", "-u", ext4.path], check=False)


def test_sigterm_while_frozen_thaws_first_then_exits(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    agent.call("freeze", {"label": "x"})
    assert agent.stop(signal.SIGTERM) == 0
    assert not frozen_now(ext4.path)
    assert "stopping" in agent.log()


def test_two_filesystems_and_a_failing_script_roll_back(make_fs, start_agent, short_tmp) -> None:
    a, b = make_fs("ext4"), make_fs("xfs")
    scripts = short_tmp / "scripts"
    scripts.mkdir(mode=0o755)
    bad = scripts / "90-fails"
    bad.write_text('#!/bin/sh\n[ "$1" = freeze ] && exit 1\nexit 0\n')
    bad.chmod(0o755)
    agent = start_agent(
        {
            "filesystems": {"mounts": [a.path, b.path]},
            "scripts": {"dir": str(scripts), "legacy_dir": None},
        }
    )
    reply = agent.call("freeze", {"label": "x"})
    assert reply["error"]["class"] == "WriterFailed"
    assert "90-fails" in reply["error"]["desc"]
    assert not frozen_now(a.path) and not frozen_now(b.path)


def test_a_daemon_logging_onto_the_filesystem_it_froze_still_answers(ext4, short_tmp) -> None:
    # stderr is a file on the frozen filesystem: one write there while frozen would hang the
    # daemon; logs are held in memory until the thaw instead
    from tests.helpers.agentproc import AgentProcess

    agent = AgentProcess(
        short_tmp,
        {
            "filesystems": {"mounts": [ext4.path]},
            "freeze": {"ceiling_seconds": 10, "timeout_seconds": 5},
        },
        log_path=Path(ext4.path) / "agent.log",
    ).start()
    try:
        assert "return" in agent.call("freeze", {"label": "self"}, timeout=5)
        start = time.monotonic()
        assert agent.call("status", timeout=3)["return"]["state"] == "frozen"
        assert agent.call("writers", timeout=3)["return"]
        assert agent.call("thaw", timeout=3)["return"]["outcome"] == "thawed"
        assert time.monotonic() - start < 3
        time.sleep(0.2)
        assert "state frozen -> thawing" in agent.log()  # written after the thaw
    finally:
        agent.stop()
