"""The descriptor text: what the engine writes parses back the same, parses the way qemu
parses it, and the check names what qemu's strstr-based parser would get wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from host.engine.check import descriptor_problems
from host.engine.descriptor import Descriptor, parse_descriptor
from host.engine.errors import CorruptFile
from host.engine.names import NO_PARENT

PATH = Path("/nonexistent/disk/disk-000001.vmdk")

DELTA = Descriptor(
    0x7FE5A098,
    0xC8A6BB2A,
    "monolithicSparse",
    "disk.vmdk",
    [("RW", 131072, "SPARSE", "disk-000001.vmdk", 0)],
)
BASE = Descriptor(
    0x3F2A9C10, NO_PARENT, "monolithicFlat", None, [("RW", 131072, "FLAT", "disk-flat.vmdk", 0)]
)


@pytest.mark.parametrize("desc", [DELTA, BASE], ids=["delta", "base"])
def test_what_the_engine_writes_reads_back_the_same(desc: Descriptor) -> None:
    assert parse_descriptor(desc.render(), PATH) == desc


def test_cid_comes_first_and_parent_cid_on_the_very_next_line() -> None:
    lines = DELTA.render().decode().splitlines()
    first = next(i for i, line in enumerate(lines) if "CID" in line)
    assert lines[first : first + 2] == ["CID=7fe5a098", "parentCID=c8a6bb2a"]
    assert 'parentFileNameHint="disk.vmdk"' in lines
    assert 'RW 131072 SPARSE "disk-000001.vmdk"' in lines
    assert 'RW 131072 FLAT "disk-flat.vmdk" 0' in BASE.render().decode().splitlines()
    assert descriptor_problems(DELTA.render()) == []


def test_an_embedded_descriptor_ends_at_the_first_nul() -> None:
    window = DELTA.render() + bytes(512) + b"CID=00000001\n"  # the rest of sectors 1-20
    assert parse_descriptor(window, PATH).cid == 0x7FE5A098


def test_the_first_cid_line_wins_as_in_qemu() -> None:
    text = b"CID=0000000a\nparentCID=ffffffff\nCID=0000000b\n"
    assert parse_descriptor(text, PATH).cid == 0xA


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (b'version=1\ncreateType="monolithicSparse"\n', "no CID/parentCID line"),
        (b"CID=nothex\nparentCID=ffffffff\n", "CID or parentCID is not hexadecimal"),
        (b"CID=\xff\xfe\nparentCID=ffffffff\n", "the descriptor is not text"),
    ],
)
def test_a_descriptor_the_engine_cannot_read_is_a_corrupt_file(text: bytes, complaint: str) -> None:
    with pytest.raises(CorruptFile, match=complaint) as caught:
        parse_descriptor(text, PATH)
    assert str(caught.value).startswith(f"{PATH}: ")


def test_a_comment_naming_cid_before_the_cid_line_is_what_qemu_would_misread() -> None:
    text = b"# Disk DescriptorFile, see CID below\nCID=0000000a\nparentCID=ffffffff\n"
    assert parse_descriptor(text, PATH).cid == 0xA  # the engine reads it right ...
    assert descriptor_problems(text) == [  # ... but qemu would take the comment's CID
        "the first 'CID' in the descriptor is not the CID= line"
    ]


def test_a_line_between_cid_and_parent_cid_is_what_qemu_would_delete() -> None:
    text = b"CID=0000000a\nversion=1\nparentCID=ffffffff\n"
    assert descriptor_problems(text) == ["parentCID= is not on the line right after CID="]
