"""A full filesystem (a 2 MiB tmpfs this test mounts): operations fail with NoSpace, lose
nothing, and a merge that ran out of space finishes once there is room again."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.engine.errors import NoSpace
from tests.helpers.env import need_root

GRAIN = 64 * 1024


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    need_root()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True, timeout=30
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def fill(path: Path, leave: int) -> None:
    """Fill the filesystem, then give back ``leave`` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    size = 0
    try:
        while True:
            size += os.write(fd, b"\xee" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(path, max(0, size - leave))


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.root
def test_writes_fail_cleanly_when_full_and_keep_everything_acknowledged(tiny_fs: Path) -> None:
    folder = tiny_fs / "d"
    model = bytearray(16 * GRAIN)
    with Disk.create(folder, 16 * GRAIN) as disk:
        disk.write(0, b"\x01" * (16 * GRAIN))
        model[:] = b"\x01" * (16 * GRAIN)
        disk.snapshot_create("a")
        fill(tiny_fs / "filler", leave=3 * GRAIN)
        failures = 0
        for g in range(16):
            data = bytes([g + 2]) * (GRAIN - 1)
            try:
                disk.write(g * GRAIN + 1, data)
            except NoSpace as err:
                assert "no space left" in str(err) and "disk-000001.vmdk" in str(err)
                failures += 1
                continue
            model[g * GRAIN + 1 : (g + 1) * GRAIN] = data
        assert failures > 0
        assert disk.read(0, len(model)) == model
        before = files(folder)
        try:
            disk.snapshot_create("while-full")
        except NoSpace:
            assert files(folder) == before and [s["name"] for s in disk.snapshot_list()] == ["a"]
        assert disk.check() == []
    with Disk.open(folder) as disk:
        assert disk.read(0, len(model)) == model and disk.check() == []
        os.unlink(tiny_fs / "filler")
        disk.write(15 * GRAIN, b"\x99" * GRAIN)  # room again: writes work
        assert disk.read(15 * GRAIN, GRAIN) == b"\x99" * GRAIN


@pytest.mark.root
def test_a_merge_that_runs_out_of_space_is_finished_later(tiny_fs: Path) -> None:
    folder = tiny_fs / "d"
    with Disk.create(folder, 8 * GRAIN) as disk:
        disk.snapshot_create("a")
        disk.write(0, b"\x01" * (2 * GRAIN))
        disk.snapshot_create("b")
        disk.write(4 * GRAIN, b"\x02" * (4 * GRAIN))  # grains b's delta does not have
        current = disk.read(0, 8 * GRAIN)
        fill(tiny_fs / "filler", leave=2 * GRAIN)
        with pytest.raises(NoSpace):
            disk.snapshot_delete("b")  # merges the current delta into b's: needs 4 grains
        assert disk.read(0, 8 * GRAIN) == current  # nothing lost, nothing mixed
        assert [s["name"] for s in disk.snapshot_list()] == ["a"]  # b is going, not back
        with pytest.raises(NoSpace):
            disk.snapshot_create("c")  # first tries to finish the merge: still no room
        assert [s["name"] for s in disk.snapshot_list()] == ["a"]
        disk.write(5 * GRAIN, b"\x03" * 10)  # an allocated grain still takes writes
        current = disk.read(0, 8 * GRAIN)
    with pytest.raises(NoSpace):
        Disk.open(folder)  # still no room to finish the merge: refused, not half-done
    os.unlink(tiny_fs / "filler")
    with Disk.open(folder) as disk:  # room again: the merge is finished on open
        assert [s["name"] for s in disk.snapshot_list()] == ["a"]
        assert disk.read(0, 8 * GRAIN) == current
        assert disk.check() == []
        assert "intent.json" not in files(folder)
