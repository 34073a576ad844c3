"""``quiesce-host serve DISK --fuse``: ext4 on a loop mount of the engine's disk, a snapshot
taken through the control socket while it is mounted, both states checked by the engine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.serve.control_client import request
from tests.helpers.env import need, need_root

pytestmark = pytest.mark.root

MiB = 1024 * 1024


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"
    return proc


def dump(image: Path, name: str, out: Path) -> bytes | None:
    proc = subprocess.run(
        ["debugfs", "-R", f"dump /{name} {out}", str(image)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "File not found" in proc.stderr or not out.exists():
        return None
    data = out.read_bytes()
    out.unlink()
    return data


def test_ext4_on_a_served_engine_disk_with_a_snapshot_while_mounted(served, short_tmp):
    need_root()
    need(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    need(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 is not installed (e2fsprogs)")
    folder = short_tmp / "disk"
    Disk.create(folder, 128 * MiB).close()
    mnt, fs = short_tmp / "mnt", short_tmp / "fs"
    mnt.mkdir()
    fs.mkdir()
    s = served(str(folder), "--fuse", str(mnt))
    raw = Path(s.wait_for("serving ").rsplit(" ", 1)[1])
    first, second = os.urandom(8 * MiB), os.urandom(4 * MiB)
    try:
        run("mkfs.ext4", "-q", "-F", raw)
        run("mount", "-o", "loop", raw, fs)
        (fs / "first.bin").write_bytes(first)
        run("sync", "-f", fs / "first.bin")
        reply = request(folder, "snapshot-create", {"name": "mounted", "consistency": "crash"})
        assert reply["snapshot"]["name"] == "mounted"
        (fs / "second.bin").write_bytes(second)
        run("sync", "-f", fs / "second.bin")
    finally:
        subprocess.run(["umount", str(fs)], capture_output=True, timeout=60)
        if os.path.ismount(fs):
            subprocess.run(["umount", "-l", str(fs)], capture_output=True, timeout=60)
    assert s.stop(signal.SIGTERM) == 0
    assert not os.path.ismount(mnt)
    with Disk.open(folder) as disk:
        assert disk.check() == []
        assert [x["name"] for x in disk.snapshot_list()] == ["mounted"]
        now, then = short_tmp / "now.raw", short_tmp / "then.raw"
        disk.export_raw(now, sync=False)
        disk.export_raw(then, "mounted", sync=False)
    run("e2fsck", "-fn", now)  # unmounted cleanly: no repair needed
    assert dump(now, "first.bin", short_tmp / "x") == first
    assert dump(now, "second.bin", short_tmp / "x") == second
    # crash-consistent: the journal may need replaying, after which it is clean
    subprocess.run(["e2fsck", "-fy", str(then)], capture_output=True, timeout=120)
    run("e2fsck", "-fn", then)
    assert dump(then, "first.bin", short_tmp / "x") == first
    assert dump(then, "second.bin", short_tmp / "x") is None
