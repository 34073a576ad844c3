"""Ctrl-C of a quiesced snapshot while the freeze has not answered yet: the host closes its
bound connection (an abort would queue behind the freeze) and the agent rolls back before
its next lock; nothing is frozen, nothing is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from host.engine.disk import Disk
from tests.helpers.env import REPO, need_root
from tests.helpers.freeze import frozen_now
from tests.helpers.hostcli import make_scripts
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.root


def test_ctrl_c_during_the_freeze_rolls_back_before_any_lock(
    ext4, start_agent, short_tmp: Path, disk_dir: Path
) -> None:
    need_root()
    scripts, trace = short_tmp / "scripts", short_tmp / "trace"
    make_scripts(scripts, trace, ["10-slow"], sleep="10-slow", seconds=2)
    agent = start_agent(
        {
            "scripts": {"dir": str(scripts), "legacy_dir": None},
            "filesystems": {"mounts": [ext4.path]},
        }
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.held_cycle",
            str(disk_dir),
            f"unix:{agent.socket}",
            "c",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: agent.call("status")["return"]["state"] == "freezing", 20)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 130, out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_until(lambda: agent.call("status")["return"]["state"] == "idle", 10)
    last = agent.call("status")["return"]["last_report"]
    assert last["outcome"] == "aborted: the host went away", last
    states = {w["name"]: w["state"] for w in last["writers"]}
    assert states["filesystems:listed"] == "not frozen", states  # rolled back before its lock
    assert not frozen_now(ext4.path)
    assert trace.read_text().split() == ["10-slow", "freeze", "10-slow", "freezeFail"]
    with Disk.open(disk_dir) as d:
        assert d.info()["depth"] == 0
