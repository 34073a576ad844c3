"""WAL positions, segment names and the segments a backup needs, as PostgreSQL names them."""

from __future__ import annotations

import pytest

from hooks.postgres.wal import backup_wal, parse_lsn, parse_size, wal_file_name

SEG = 16 << 20


def label(start: str, file: str) -> str:
    return (
        f"START WAL LOCATION: {start} (file {file})\nCHECKPOINT LOCATION: {start}\n"
        "BACKUP METHOD: streamed\nBACKUP FROM: primary\nLABEL: snap\n"
    )


def test_lsns_segment_names_and_sizes() -> None:
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert wal_file_name(1, parse_lsn("0/2000028") // SEG, SEG) == "000000010000000000000002"
    # 256 segments of 16 MB per "log id": the middle part of the name counts those
    assert wal_file_name(3, 256, SEG) == "000000030000000100000000"
    assert wal_file_name(1, 1, 1 << 30) == "000000010000000000000001"
    assert [parse_size(t) for t in ("16MB", "1GB", "8192kB", "8192", " 64 B ")] == [
        SEG,
        1 << 30,
        8 << 20,
        8192,
        64,
    ]
    with pytest.raises(ValueError, match="not a size"):
        parse_size("16 MiB")


def test_a_backup_needs_every_segment_from_its_start_to_its_stop() -> None:
    wal = backup_wal(label("0/2000028", "000000010000000000000002"), "0/3000100", SEG)
    assert wal == {
        "timeline": 1,
        "wal_file_start": "000000010000000000000002",
        "wal_file_stop": "000000010000000000000003",
        "wal_files": ["000000010000000000000002", "000000010000000000000003"],
    }


def test_a_stop_on_a_segment_boundary_ends_in_the_segment_before() -> None:
    wal = backup_wal(label("0/2000028", "000000010000000000000002"), "0/3000000", SEG)
    assert wal["wal_file_stop"] == "000000010000000000000002"
    assert wal["wal_files"] == ["000000010000000000000002"]


def test_the_timeline_comes_from_the_start_file() -> None:
    wal = backup_wal(label("0/5000060", "000000020000000000000005"), "0/5000138", SEG)
    assert wal["timeline"] == 2
    assert wal["wal_files"] == ["000000020000000000000005"]


def test_without_a_start_line_or_with_too_many_segments_no_list_is_given() -> None:
    wal = backup_wal("LABEL: snap\n", "0/3000100", SEG)
    assert (wal["timeline"], wal["wal_file_start"], wal["wal_files"]) == (1, None, [])
    assert wal["wal_file_stop"] == "000000010000000000000003"
    wide = backup_wal(label("0/2000028", "000000010000000000000002"), "2/0", SEG)
    assert wide["wal_files"] == [] and wide["wal_file_stop"] == "0000000100000001000000FF"
