"""The demo's scenario as a test: a served engine disk, ext4, PostgreSQL and MariaDB under
load, a quiesced snapshot, a revert, and every acknowledged row before it and none after it;
and the lab is gone afterwards, also after a Ctrl-C in the middle."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from host.lab.demo import SNAPSHOT, Clock, scenario
from host.lab.local import Lab, console_script, missing_requirements
from host.snapshots.target import load_snapshot
from tests.helpers.env import FREEZE_ROOT, REPO, need, need_root

pytestmark = [pytest.mark.root, pytest.mark.pg, pytest.mark.mysql, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _lab_needs() -> None:
    need_root()
    missing = missing_requirements()
    need(not missing, f"the demo lab needs: {'; '.join(missing)}")
    # the lab lives under the suite's freeze root (0700 from mkdtemp): the database users
    # must be able to traverse it to their data directories and sockets
    os.chmod(FREEZE_ROOT, 0o711)


def lab_mounts() -> list[str]:
    """Mounts of this run's labs (another suite running beside this one has its own root)."""
    mine = os.path.realpath(FREEZE_ROOT) + "/qdemo-"
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(mine)]


def test_the_demo_scenario_keeps_every_row_before_the_snapshot_and_none_after(capsys) -> None:
    lab = Lab(parent=FREEZE_ROOT, say=print)
    try:
        verdicts, outcome = scenario(lab, Clock(), seconds=1.5, rate=200)
        assert outcome.confirmed and outcome.consistency == "application"
        for v in verdicts:
            assert v.ok, v.line()
            assert v.before > 20 and v.after > 20  # rows on both sides, however slow the machine
        held = outcome.host["window_ms"]
        assert held < 5000, f"held window {held} ms"
        writers = {w["name"]: w for w in outcome.agent["writers"]}
        assert set(writers) == {"mysql:demo", "postgres:demo", "filesystems:listed"}
        assert all(w["state"] == "thawed" for w in writers.values())
        pg = outcome.record()["artifacts"]["postgres:demo"]
        assert pg["backup_label"].startswith("START WAL LOCATION")
        assert outcome.record()["artifacts"]["mysql:demo"]["binlog_file"]
        out = capsys.readouterr().out
        assert "PostgreSQL: crash recovery from the snapshot" in out
        # the served snapshot's final record is in the disk's tree.json
        snap = load_snapshot(lab.disk, SNAPSHOT)
        assert snap["consistency"] == "application"
        assert snap["artifacts"]["postgres:demo"]["backup_label"] == pg["backup_label"]
    finally:
        lab.close()
    assert not lab.root.exists()
    assert lab_mounts() == []


def test_ctrl_c_in_the_middle_cleans_up_everything() -> None:
    # the command scripts/demo runs; its lab goes under the suite's freeze root (TMPDIR)
    proc = subprocess.Popen(
        [console_script("quiesce-host"), "demo", "--seconds", "30", "--rate", "100"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TMPDIR=FREEZE_ROOT),
    )
    assert proc.stdout is not None
    lines, root = [], None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "building the lab in" in line:
            root = line.rsplit(" ", 1)[1].strip()
        if "insert load running" in line or time.monotonic() > deadline:
            break
    assert root is not None and root.startswith(FREEZE_ROOT), "".join(lines)
    assert lab_mounts(), "the lab was not mounted"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted: cleaning up" in rest and f"removed {root}" in rest
    assert not Path(root).exists()
    assert [m for m in lab_mounts() if m.startswith(root)] == []


def test_the_demo_says_clearly_when_it_cannot_run(monkeypatch, capsys) -> None:
    from host.cli.main import main
    from host.lab import local as lab

    monkeypatch.setattr(lab.os, "geteuid", lambda: 1000)
    assert main(["demo", "--seconds", "1", "--rate", "1"]) == 2
    assert "root (loop devices, FUSE mounts and FIFREEZE need it)" in capsys.readouterr().err


def test_a_missing_command_says_to_run_setup(monkeypatch, tmp_path) -> None:
    from host.lab import local as lab
    from host.lab.databases import LabError

    monkeypatch.setattr(lab.sys, "executable", str(tmp_path / "bin" / "python3"))
    with pytest.raises(LabError, match=r"bin/quiesce-host is missing: .*run scripts/setup"):
        lab.console_script("quiesce-host")
