"""``quiesce-host disk check`` as a sysadmin runs it on damaged disks: every problem at once,
each naming the file and what is wrong; exit 1 if the disk still opens, else the code of the
error that stops it; qemu-img check as the judge of what it misses."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from host.engine.disk import Disk
from tests.helpers.disks import GRAIN, QEMU_IMG, need_qemu, qemu_io, run
from tests.helpers.hostcli import cli

SMALL = 64 * GRAIN


@pytest.fixture
def chain(folder: Path) -> Path:
    """base <- 000001 (snapshot a) <- 000002 (b) <- 000003 (current), data in each."""
    with Disk.create(folder, SMALL) as d:
        d.write(0, b"\x10" * 8 * GRAIN)
        d.snapshot_create("a")
        d.write(GRAIN, b"\x11" * 4 * GRAIN)
        d.snapshot_create("b")
        d.write(2 * GRAIN, b"\x12" * 4 * GRAIN)
        d.snapshot_create("c")
        d.write(3 * GRAIN, b"\x13" * 4 * GRAIN)
    return folder


def grain_table(path: Path) -> int:
    """Byte offset of the first primary grain table of a delta."""
    raw = path.read_bytes()
    gd = struct.unpack_from("<Q", raw, 56)[0]  # gdOffset in the header
    return struct.unpack_from("<I", raw, gd * 512)[0] * 512


def entry(path: Path, grain: int) -> int:
    return struct.unpack_from("<I", path.read_bytes(), grain_table(path) + 4 * grain)[0]


def set_entry(path: Path, grain: int, sector: int) -> None:
    pos = grain_table(path) + 4 * grain
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack("<I", sector))


def test_a_clean_disk_passes(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "disk", "check", chain)[:2] == (0, f"{chain}: no problems found\n")
    code, out, _ = cli(capsys, "disk", "check", chain, "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "problems": []}


def test_grain_damage_qemu_img_check_passes_is_reported(
    chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_qemu()
    delta = chain / "disk-000001.vmdk"
    set_entry(delta, 5, entry(delta, 1))  # grain 5 now shares grain 1's data
    set_entry(delta, 3, entry(delta, 3) + 8)  # grain 3 starts 8 sectors into its slot
    assert "No errors" in run(QEMU_IMG or "qemu-img", "check", "-f", "vmdk", delta).stdout
    code, out, _ = cli(capsys, "disk", "check", chain)
    assert code == 1  # damaged, but the engine still opens it
    lines = out.splitlines()
    assert all(line.startswith(f"problem: {delta}: ") for line in lines)
    assert any(
        "grains 1 and 5 (disk offsets 65536 and 327680) overlap in the file" in line
        for line in lines
    )
    assert any(
        "grain 3 (disk offset 196608) points to sector" in line and "not grain-aligned" in line
        for line in lines
    )
    assert any("redundant grain table 0 differs from the primary" in line for line in lines)


def test_every_problem_is_reported_at_once(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A parent written by another tool and a truncated delta: open stops at one, check
    names both."""
    need_qemu()
    qemu_io(chain / "disk-000001.vmdk", "write -P 0x66 0 512")  # qemu gives it a new CID
    top = chain / "disk-000003.vmdk"
    os.truncate(top, top.stat().st_size - 512)
    code, out, _ = cli(capsys, "disk", "check", chain)
    assert code == 11, out  # CorruptFile: the disk does not open as it is
    assert (
        f"problem: {top}: grain table entry for grain 6 points to sector" in out
        and "past the end of the file" in out
        and "(this file takes the writes)" in out
    )
    assert (
        f"problem: {chain / 'disk-000002.vmdk'}: parentCID=" in out
        and "but its parent disk-000001.vmdk has CID=" in out
        and "--relink" in out
    )
    code, _, err = cli(capsys, "disk", "info", chain)
    assert code == 11 and f"quiesce-host: error: {top}: grain table entry" in err


def test_a_missing_parent_says_who_needs_it(
    chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.unlink(chain / "disk-000001.vmdk")
    code, out, _ = cli(capsys, "disk", "check", chain, "--json")
    report = json.loads(out)
    assert code == 12 and report["ok"] is False
    assert report["problems"] == [
        f"{chain / 'disk-000001.vmdk'}: cannot open the delta: No such file or directory "
        "(this file holds snapshot 'b' and is the parent of disk-000002.vmdk)"
    ]


def test_a_foreign_file_in_the_chain(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_qemu()
    qcow2 = chain / "x.qcow2"
    run(QEMU_IMG or "qemu-img", "create", "-q", "-f", "qcow2", qcow2, str(SMALL))
    os.replace(qcow2, chain / "disk-000003.vmdk")
    code, out, _ = cli(capsys, "disk", "check", chain)
    assert code == 10
    assert out == (
        f"problem: {chain / 'disk-000003.vmdk'}: bad magic b'QFI\\xfb', not a KDMV "
        "sparse extent (this file takes the writes)\n"
    )


def test_a_parent_hint_naming_another_file(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = chain / "disk-000002.vmdk"
    raw = path.read_bytes().replace(
        b'parentFileNameHint="disk-000001.vmdk"', b'parentFileNameHint="disk-000003.vmdk"', 1
    )
    path.write_bytes(raw)
    code, out, _ = cli(capsys, "disk", "check", chain)
    assert code == 12
    assert out == (
        f"problem: {path}: parentFileNameHint is 'disk-000003.vmdk' but tree.json "
        "says its parent is disk-000001.vmdk\n"
    )


def test_an_interrupted_operation_is_reported_and_the_next_open_finishes_it(
    chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (chain / "intent.json").write_text(json.dumps({"op": "create", "new": "disk-000004.vmdk"}))
    code, out, _ = cli(capsys, "disk", "check", chain)
    assert code == 2 and f"problem: {chain / 'intent.json'}: an interrupted create" in out
    Disk.open(chain).close()
    assert cli(capsys, "disk", "check", chain)[0] == 0


def test_a_disk_in_use_cannot_be_checked(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Disk.open(chain):
        code, _, err = cli(capsys, "disk", "check", chain)
    assert code == 17 and "in use by another process" in err
