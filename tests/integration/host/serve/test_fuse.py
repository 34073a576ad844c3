"""FUSE: MOUNT/disk.raw as a file the kernel can loop-mount; snapshots cut between writes."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from host.serve.control import ControlServer
from host.serve.control_client import request
from host.serve.device import GatedDevice, IOGate
from host.serve.fuse import FILE_NAME, serve_fuse
from tests.helpers.env import need, need_root
from tests.helpers.memdisk import MemDisk

pytestmark = pytest.mark.root

MiB = 1024 * 1024
BLOCK = 4096


def unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)


def mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


class FuseMount:
    """serve_fuse in a thread of this process (the CLI runs it in its main thread)."""

    def __init__(self, device, mountpoint: Path, gate: IOGate, readonly: bool = False) -> None:
        self.mountpoint = mountpoint
        self.file = mountpoint / FILE_NAME
        self.gated = GatedDevice(device, gate)
        ready = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                serve_fuse(self.gated, str(mountpoint), readonly=readonly, on_ready=ready.set)
            except BaseException as err:  # noqa: BLE001 - reported to the test below
                self.error = err
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10), "FUSE mount did not come up"
        assert self.error is None, self.error
        for _ in range(100):
            if mounted(mountpoint):
                break
            time.sleep(0.02)

    def stop(self) -> None:
        unmount(self.mountpoint)
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def fuse_mount(short_tmp):
    need_root()
    need(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    need(shutil.which("fusermount3") is not None, "fusermount3 is not installed (fuse3)")
    mounts: list[FuseMount] = []
    loops: list[Path] = []

    def factory(device, gate=None, readonly=False):
        mnt = short_tmp / f"fuse{len(mounts)}"
        mnt.mkdir()
        m = FuseMount(device, mnt, gate or IOGate(), readonly)
        mounts.append(m)
        return m

    factory.loops = loops  # type: ignore[attr-defined]
    yield factory
    for loop in loops:
        subprocess.run(["umount", str(loop)], capture_output=True, timeout=60)
        if mounted(loop):
            subprocess.run(["umount", "-l", str(loop)], capture_output=True, timeout=60)
    for m in mounts:
        m.stop()


def test_the_file_reads_writes_fsyncs_and_keeps_its_size(fuse_mount):
    disk = MemDisk(4 * MiB + 512)
    m = fuse_mount(disk)
    assert os.listdir(m.mountpoint) == [FILE_NAME]
    assert m.file.stat().st_size == disk.size
    fd = os.open(m.file, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"hello", 1000) == 5
        assert disk.data[1000:1005] == b"hello"  # direct_io: no page cache in between
        disk.data[2000:2003] = b"abc"
        assert os.pread(fd, 3, 2000) == b"abc"
        os.fsync(fd)
        assert disk.flushes >= 1
        assert os.pwrite(fd, b"xyz", disk.size - 1) == 1  # clipped at the end
        with pytest.raises(OSError) as err:
            os.pwrite(fd, b"x", disk.size)
        assert err.value.errno in (errno.ENOSPC, errno.EFBIG)
        with pytest.raises(OSError):
            os.ftruncate(fd, 10)
        big = os.urandom(3 * MiB)
        assert os.pwrite(fd, big, 4096) == len(big)
        assert os.pread(fd, len(big), 4096) == big
    finally:
        os.close(fd)
    assert m.gated.stats["bytes_written"] >= 3 * MiB


def test_read_only_mount_refuses_writes(fuse_mount):
    disk = MemDisk(MiB)
    m = fuse_mount(disk, readonly=True)
    with pytest.raises(OSError) as err:
        os.open(m.file, os.O_RDWR)
    assert err.value.errno in (errno.EROFS, errno.EACCES)
    with open(m.file, "rb") as f:
        assert f.read(4) == bytes(4)


def test_ext4_on_a_loop_mount_of_the_file(fuse_mount, short_tmp):
    need(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 is not installed (e2fsprogs)")
    disk = MemDisk(256 * MiB)
    m = fuse_mount(disk)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(m.file)], check=True, timeout=120)
    fs = short_tmp / "ext4"
    fs.mkdir()
    subprocess.run(["mount", "-o", "loop", str(m.file), str(fs)], check=True, timeout=60)
    fuse_mount.loops.append(fs)
    payload = os.urandom(20 * MiB)
    (fs / "data.bin").write_bytes(payload)
    (fs / "hello.txt").write_text("hello from the loop mount\n")
    subprocess.run(["sync", "-f", str(fs / "data.bin")], check=True, timeout=60)
    subprocess.run(["umount", str(fs)], check=True, timeout=60)
    fuse_mount.loops.remove(fs)
    # the engine's bytes are a clean ext4 holding the files
    image = short_tmp / "check.img"
    image.write_bytes(disk.read(0, disk.size))
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(image)], capture_output=True, text=True, timeout=120
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = short_tmp / "data.out"
    subprocess.run(
        ["debugfs", "-R", f"dump /data.bin {out}", str(image)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert out.read_bytes() == payload


def test_snapshot_while_writing_through_fuse(fuse_mount, short_tmp):
    blocks = 2048
    disk = MemDisk(blocks * BLOCK)
    gate = IOGate()
    m = fuse_mount(disk, gate)
    ctl = ControlServer(short_tmp, disk, gate)
    ctl.start()
    state = {"sent": 0, "acked": 0}
    stop = threading.Event()

    def writer() -> None:
        fd = os.open(m.file, os.O_WRONLY)
        try:
            for i in range(blocks):
                if stop.is_set():
                    break
                state["sent"] = i + 1
                os.pwrite(fd, struct.pack(">II", 7, i + 1) * (BLOCK // 8), i * BLOCK)
                state["acked"] = i + 1
        finally:
            os.close(fd)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.1)
        acked_before = state["acked"]
        request(short_tmp, "snapshot-create", {"name": "cut"})
        sent_after = state["sent"]
    finally:
        stop.set()
        t.join(30)
        ctl.shutdown()
    data = disk.snapshots["cut"]["data"]
    k = 0
    while k < blocks and data[k * BLOCK : (k + 1) * BLOCK] == struct.pack(">II", 7, k + 1) * 512:
        k += 1
    assert data[k * BLOCK :] == bytes(len(data) - k * BLOCK), "a gap or torn write after the cut"
    assert 0 < acked_before <= k <= sent_after
