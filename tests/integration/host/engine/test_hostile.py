"""Corrupt and hostile input: a clear DiskError naming the file, never a crash, never a read
outside the disk folder; and what ``check`` finds that qemu-img check does not."""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.engine.errors import ChainBroken, CidMismatch, CorruptFile, DiskError, ForeignFile
from host.engine.sparse import HEADER
from tests.helpers.disks import GRAIN, need_qemu, qemu_io

SMALL = 64 * GRAIN


@pytest.fixture
def chain(folder: Path) -> Path:
    """base <- disk-000001 (snapshot a) <- disk-000002 (current), with data in each."""
    with Disk.create(folder, SMALL) as d:
        d.write(0, b"base" * 1000)
        d.snapshot_create("a")
        d.write(GRAIN, b"one" * 1000)
        d.snapshot_create("b")
        d.write(2 * GRAIN, b"two" * 1000)
    return folder


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def hdr(path: Path) -> tuple:
    return HEADER.unpack(path.read_bytes()[:512])


def test_truncated_delta(chain: Path) -> None:
    os.truncate(chain / "disk-000001.vmdk", 1000)
    with pytest.raises(CorruptFile, match="disk-000001.vmdk: truncated"):
        Disk.open(chain)


def test_truncated_grain_data(chain: Path) -> None:
    path = chain / "disk-000001.vmdk"
    os.truncate(path, path.stat().st_size - 512)
    with pytest.raises(CorruptFile, match="disk-000001.vmdk: grain table entry .* past the end"):
        Disk.open(chain)


def test_bad_magic(chain: Path) -> None:
    patch(chain / "disk-000002.vmdk", 0, b"QFI\xfb")
    with pytest.raises(ForeignFile, match="disk-000002.vmdk: bad magic"):
        Disk.open(chain)


def test_grain_table_entry_past_the_end(chain: Path) -> None:
    path = chain / "disk-000001.vmdk"
    gd = hdr(path)[9]
    gt = struct.unpack("<I", path.read_bytes()[gd * 512 : gd * 512 + 4])[0]
    patch(path, gt * 512 + 4 * 5, struct.pack("<I", 10_000_000))
    with pytest.raises(CorruptFile, match="grain 5 points to sector 10000000, past the end"):
        Disk.open(chain)


def test_missing_grain_table(chain: Path) -> None:
    path = chain / "disk-000001.vmdk"
    patch(path, hdr(path)[9] * 512, struct.pack("<I", 0))
    with pytest.raises(CorruptFile, match="grain directory entry 0"):
        Disk.open(chain)


def test_unsupported_versions_and_grain_sizes(chain: Path) -> None:
    path = chain / "disk-000002.vmdk"
    patch(path, 4, struct.pack("<I", 3))
    with pytest.raises(ForeignFile, match="version 3"):
        Disk.open(chain)
    patch(path, 4, struct.pack("<I", 1))
    patch(path, 20, struct.pack("<Q", 16))
    with pytest.raises(ForeignFile, match="grainSize 16"):
        Disk.open(chain)


def test_parent_loop_in_the_tree(chain: Path) -> None:
    tree = json.loads((chain / "tree.json").read_text())
    tree["layers"]["disk-000001.vmdk"] = "disk-000002.vmdk"
    (chain / "tree.json").write_text(json.dumps(tree))
    with pytest.raises(ChainBroken, match="parent loop"):
        Disk.open(chain)


def test_path_traversal_in_the_tree_is_refused(chain: Path) -> None:
    tree = json.loads((chain / "tree.json").read_text())
    tree["layers"]["../../etc/passwd"] = "disk.vmdk"
    (chain / "tree.json").write_text(json.dumps(tree))
    with pytest.raises(CorruptFile, match="not a plain file name"):
        Disk.open(chain)


def rewrite_descriptor(path: Path, old: bytes, new: bytes) -> None:
    raw = bytearray(path.read_bytes())
    window = bytes(raw[512 : 512 * 21])
    assert old in window
    window = window.replace(old, new)
    raw[512 : 512 * 21] = window.ljust(512 * 20, b"\0")[: 512 * 20]
    path.write_bytes(bytes(raw))


def test_path_traversal_in_parent_file_name_hint(chain: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.vmdk"
    outside.write_bytes((chain / "disk.vmdk").read_bytes())  # a valid-looking parent
    rewrite_descriptor(
        chain / "disk-000001.vmdk",
        b'parentFileNameHint="disk.vmdk"',
        b'parentFileNameHint="../outside.vmdk"',
    )
    with pytest.raises(ForeignFile, match="resolves to .*outside.vmdk.*refusing"):
        Disk.open(chain)


def test_hint_that_disagrees_with_the_tree(chain: Path) -> None:
    rewrite_descriptor(
        chain / "disk-000002.vmdk",
        b'parentFileNameHint="disk-000001.vmdk"',
        b'parentFileNameHint="disk.vmdk"',
    )
    with pytest.raises(ChainBroken, match="tree.json says its parent is disk-000001.vmdk"):
        Disk.open(chain)


def test_a_layer_that_is_a_symlink_out_of_the_folder(chain: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.vmdk"
    os.rename(chain / "disk-000001.vmdk", target)
    os.symlink(target, chain / "disk-000001.vmdk")
    with pytest.raises(ForeignFile, match="symlink out of the disk folder"):
        Disk.open(chain)


def test_missing_parent_file(chain: Path) -> None:
    os.unlink(chain / "disk-000001.vmdk")
    with pytest.raises(ChainBroken, match="disk-000001.vmdk: cannot open") as err:
        Disk.open(chain)
    assert "is the parent of disk-000002.vmdk" in str(err.value)  # what the file was for
    assert "quiesce-host disk check" in str(err.value)


@pytest.mark.qemu
def test_a_parent_written_by_another_tool_is_a_cid_mismatch(chain: Path) -> None:
    need_qemu()
    qemu_io(chain / "disk-000001.vmdk", "write -P 0x66 0 512")  # qemu gives it a new CID
    with pytest.raises(
        CidMismatch, match="disk-000002.vmdk: parentCID=.* its parent disk-000001.vmdk has CID="
    ):
        Disk.open(chain)


def test_damaged_tree_and_intent_records(chain: Path) -> None:
    (chain / "intent.json").write_text("{not json")
    with pytest.raises(CorruptFile, match="intent.json: the intent record is not valid JSON"):
        Disk.open(chain)
    (chain / "intent.json").write_text(json.dumps({"op": "explode"}))
    with pytest.raises(CorruptFile, match="unknown operation 'explode'"):
        Disk.open(chain)
    (chain / "intent.json").unlink()
    (chain / "tree.json").write_text("[]")
    with pytest.raises(CorruptFile, match="tree.json: not a quiesce-disk/1 tree"):
        Disk.open(chain)
    (chain / "tree.json").unlink()
    with pytest.raises(CorruptFile, match="not a disk made by quiesce-host"):
        Disk.open(chain)


def test_truncated_flat_extent_and_wrong_base_descriptor(chain: Path) -> None:
    os.truncate(chain / "disk-flat.vmdk", 1000)
    with pytest.raises(CorruptFile, match="disk-flat.vmdk: truncated"):
        Disk.open(chain)
    (chain / "disk.vmdk").write_bytes(b"KDMV" + bytes(508))
    with pytest.raises(ForeignFile, match="disk.vmdk: not a descriptor"):
        Disk.open(chain)


def test_random_damage_never_escapes_as_anything_but_a_disk_error(chain: Path) -> None:
    """Flip bytes in the metadata of a delta: open raises DiskError or reads fine."""
    path = chain / "disk-000001.vmdk"
    pristine = path.read_bytes()
    overhead = hdr(path)[10] * 512
    rng = random.Random(5)
    outcomes = {"refused": 0, "opened": 0}
    for _ in range(int(os.environ.get("QUIESCE_FUZZ_TRIALS", "300"))):
        raw = bytearray(pristine)
        for _ in range(rng.randint(1, 8)):
            pos = rng.choice([rng.randrange(0, 80), rng.randrange(0, overhead)])
            raw[pos] = rng.randrange(256)
        path.write_bytes(bytes(raw))
        try:
            with Disk.open(chain, readonly=True) as d:
                d.read(0, SMALL)
                d.check()
            outcomes["opened"] += 1
        except DiskError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def test_check_finds_what_qemu_img_check_misses(chain: Path) -> None:
    path = chain / "disk-000001.vmdk"
    h = hdr(path)
    gd, rgd = h[9], h[8]
    gt = struct.unpack("<I", path.read_bytes()[gd * 512 : gd * 512 + 4])[0]
    first = struct.unpack("<I", path.read_bytes()[gt * 512 + 4 : gt * 512 + 8])[0]  # grain 1
    patch(path, gt * 512 + 4 * 7, struct.pack("<I", first))  # grain 7 shares grain 1's data
    with Disk.open(chain, readonly=True) as d:
        problems = d.check()
    assert any("redundant grain table 0 differs" in p for p in problems)
    assert any("grains 1 and 7 (disk offsets 65536 and 458752) overlap" in p for p in problems)
    assert all(str(chain) in p for p in problems)
    assert rgd != gd


def test_check_reports_stray_files(chain: Path) -> None:
    (chain / "disk-000009.vmdk").write_bytes(b"")
    with Disk.open(chain, readonly=True) as d:
        assert d.check() == [
            f"{chain / 'disk-000009.vmdk'}: a delta file that no snapshot or layer uses"
        ]
    assert DiskError  # the root every error above derives from
