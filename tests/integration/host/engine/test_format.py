"""The files are what qemu expects: layout, descriptor, CIDs, and data both ways."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from host.engine.descriptor import parse_descriptor
from host.engine.disk import Disk
from host.engine.errors import CidMismatch
from host.engine.sparse import HEADER, Layout
from tests.helpers.disks import (
    GRAIN,
    QEMU_IMG,
    SIZE,
    MiB,
    need_qemu,
    qemu_io,
    qemu_judge,
    run,
)


def header(path: Path) -> tuple:
    return HEADER.unpack(path.read_bytes()[:512])


def test_layout_matches_what_qemu_img_create_writes() -> None:
    # qemu-img create -f vmdk 1G: rgd 21, gd 150, GTs from 151, overHead 384 (notes 1.2)
    lay = Layout.of(1024 * MiB // 512)
    assert (lay.rgd, lay.rgt, lay.gd, lay.gt, lay.overhead) == (21, 22, 150, 151, 384)


def test_a_delta_has_the_header_qemu_and_vmware_need(disk: Disk) -> None:
    disk.snapshot_create("s")
    (
        magic,
        version,
        flags,
        capacity,
        grain,
        desc_off,
        desc_size,
        ngtes,
        rgd,
        gd,
        overhead,
        _unclean,
        eol,
        compress,
    ) = header(disk.current_file())
    assert (magic, version, flags, grain, desc_off, desc_size, ngtes) == (
        b"KDMV",
        1,
        3,
        128,
        1,
        20,
        512,
    )
    assert capacity * 512 == SIZE and eol == b"\n \r\n" and compress == 0
    assert overhead % 128 == 0
    raw = disk.current_file().read_bytes()
    n_gts = 2
    gdes = struct.unpack("<2I", raw[gd * 512 : gd * 512 + 8])
    rgdes = struct.unpack("<2I", raw[rgd * 512 : rgd * 512 + 8])
    assert all(gdes) and all(rgdes) and set(gdes).isdisjoint(rgdes)  # every table allocated
    assert len(raw) == overhead * 512 and n_gts == len(gdes)


def test_descriptor_has_cid_first_and_parent_cid_on_the_next_line(disk: Disk) -> None:
    disk.snapshot_create("s")
    text = disk.current_file().read_bytes()[512 : 512 * 21].split(b"\0")[0].decode()
    lines = text.splitlines()
    i = next(n for n, ln in enumerate(lines) if "CID" in ln)
    assert lines[i].startswith("CID=") and lines[i + 1].startswith("parentCID=")
    assert 'parentFileNameHint="disk.vmdk"' in text
    assert 'createType="monolithicSparse"' in text
    base = parse_descriptor((disk.folder / "disk.vmdk").read_bytes(), disk.folder)
    assert parse_descriptor(text.encode(), disk.folder).parent_cid == base.cid


def test_grains_are_appended_grain_aligned(disk: Disk) -> None:
    disk.snapshot_create("s")
    disk.write(5 * GRAIN + 10, b"x")  # partial grain: copy-on-write
    disk.write(30 * MiB, b"y" * (3 * GRAIN))
    top = disk._layers[disk.tree.current]
    used = sorted(s for s in top.gt if s)
    assert all(s % 128 == 0 for s in used) and used[0] == top.overhead
    assert used == list(range(used[0], used[0] + 128 * len(used), 128))


@pytest.mark.qemu
def test_qemu_opens_the_chain_and_agrees_on_every_byte(disk: Disk, tmp_path: Path) -> None:
    need_qemu()
    model = bytearray(SIZE)
    for i, (off, data) in enumerate(
        [(0, b"a" * 100_000), (GRAIN - 3, b"b" * 7), (SIZE - 5, b"c" * 5), (33 * MiB, b"d" * GRAIN)]
    ):
        disk.write(off, data)
        model[off : off + len(data)] = data
        disk.snapshot_create(f"s{i}")
    disk.flush()
    out = run(
        QEMU_IMG or "qemu-img", "info", "--backing-chain", "--output=json", disk.current_file()
    )
    chain = json.loads(out.stdout)
    assert [Path(c["filename"]).name for c in chain] == disk.tree.chain(disk.tree.current)[::-1]
    qemu_judge(disk.current_file(), model, tmp_path)


@pytest.mark.qemu
def test_qemu_io_writes_read_back_through_the_engine(folder: Path, tmp_path: Path) -> None:
    need_qemu()
    with Disk.create(folder, SIZE) as d:
        d.write(0, b"\x11" * (2 * GRAIN))
        d.snapshot_create("s")
        current = d.current_file()
    qemu_io(
        current,
        "write -P 0xab 100 70000",
        "write -P 0xcd 33M 64k",
        "write -z 128k 64k",
        "aio_write -P 0x01 2M 4k",
        "aio_flush",
    )
    with Disk.open(folder) as d:
        assert d.read(0, 100) == b"\x11" * 100
        assert d.read(100, 70000) == b"\xab" * 70000
        assert d.read(70100, 2 * GRAIN - 70100) == b"\x11" * (2 * GRAIN - 70100)
        assert d.read(33 * MiB, GRAIN) == b"\xcd" * GRAIN
        assert d.read(128 * 1024, GRAIN) == bytes(GRAIN)
        assert d.read(2 * MiB, 4096) == b"\x01" * 4096
        assert d.check() == []
        # and the engine's writes after qemu's read back in qemu
        d.write(2 * MiB + 4000, b"\x02" * 200)
        d.flush()
        model = bytearray(d.read(0, SIZE))
    qemu_judge(current, model, tmp_path)


@pytest.mark.qemu
def test_qemu_can_write_the_base_while_there_are_no_snapshots(folder: Path, tmp_path: Path) -> None:
    need_qemu()
    Disk.create(folder, SIZE).close()
    qemu_io(folder / "disk.vmdk", "write -P 0x5a 1000 3000")
    with Disk.open(folder) as d:
        assert d.read(1000, 3000) == b"\x5a" * 3000
        d.snapshot_create("after-qemu")  # its parentCID is the CID qemu gave the base
        d.write(0, b"z")
    run(QEMU_IMG or "qemu-img", "info", "--backing-chain", folder / "disk-000001.vmdk")
    qemu_io(folder / "disk-000001.vmdk", "read -P 0x5a 1000 3000")


def test_the_engine_gives_the_current_layer_a_new_cid_at_its_first_write(disk: Disk) -> None:
    disk.snapshot_create("s")
    top = disk._layers[disk.tree.current]
    before = top.read_cid()
    disk.read(0, 10)
    assert top.read_cid() == before
    disk.write(0, b"x")
    after = top.read_cid()
    disk.write(1, b"y")
    assert after != before and top.read_cid() == after


def test_reads_of_unwritten_space_are_zeros_and_any_alignment_works(disk: Disk) -> None:
    assert disk.read(0, 3 * GRAIN + 17) == bytes(3 * GRAIN + 17)
    disk.snapshot_create("s")
    disk.write(GRAIN - 1, b"\xff" * (GRAIN + 2))
    assert disk.read(GRAIN - 2, GRAIN + 4) == b"\0" + b"\xff" * (GRAIN + 2) + b"\0"


@pytest.mark.qemu
def test_a_chain_qemu_img_commit_broke_is_refused_then_relinked(
    folder: Path, tmp_path: Path
) -> None:
    """qemu-img commit gives the base a new CID and leaves the child's parentCID stale."""
    need_qemu()
    with Disk.create(folder, SIZE) as d:
        d.write(0, b"\x01" * GRAIN)
        d.snapshot_create("a")
        d.write(GRAIN, b"\x02" * GRAIN)
        model = d.read(0, SIZE)
    run(QEMU_IMG or "qemu-img", "commit", folder / "disk-000001.vmdk")
    with pytest.raises(CidMismatch, match="disk-000001.vmdk: parentCID="):
        Disk.open(folder)
    fixed = Disk.relink(folder)
    assert len(fixed) == 1 and "disk-000001.vmdk: parent set to disk.vmdk" in fixed[0]
    with Disk.open(folder) as d:
        assert d.read(0, SIZE) == model and d.check() == []
    qemu_judge(folder / "disk-000001.vmdk", model, tmp_path)
