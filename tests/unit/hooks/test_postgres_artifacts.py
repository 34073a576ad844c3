"""The label files a PostgreSQL backup leaves in artifacts_dir: whole, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hooks.postgres.artifacts import label_folder, safe_label, write_label_files

LABEL = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nLABEL: snap\n"


def test_a_label_becomes_a_folder_name_that_stays_inside_artifacts_dir() -> None:
    assert safe_label("../snap 1/x") == "_snap_1_x"
    assert safe_label("...") == "backup"
    assert len(safe_label("x" * 500)) == 100
    assert label_folder("/var/lib/qa", "nightly/2026") == "/var/lib/qa/nightly_2026"


def test_the_label_files_are_written_and_nothing_else(tmp_path: Path) -> None:
    folder = label_folder(str(tmp_path), "snap")
    write_label_files(folder, LABEL, "16385 /srv/ts\n", {"stop_lsn": "0/2000100", "timeline": 1})
    written = Path(folder)
    assert sorted(p.name for p in written.iterdir()) == [
        "backup_info.json",
        "backup_label",
        "tablespace_map",
    ]
    assert (written / "backup_label").read_text() == LABEL
    assert (written / "tablespace_map").read_text() == "16385 /srv/ts\n"
    assert json.loads((written / "backup_info.json").read_text()) == {
        "stop_lsn": "0/2000100",
        "timeline": 1,
    }
    assert written.stat().st_mode & 0o007 == 0  # made 0750: others read no label


def test_an_empty_tablespace_map_is_not_written_and_old_files_are_replaced(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "snap"
    folder.mkdir()
    (folder / "backup_label").write_text("an older, longer label\n" * 10)
    write_label_files(str(folder), LABEL, "", {})
    assert (folder / "backup_label").read_text() == LABEL
    assert sorted(p.name for p in folder.iterdir()) == ["backup_info.json", "backup_label"]


def test_a_folder_that_cannot_be_made_raises_oserror(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(OSError):
        write_label_files(str(tmp_path / "not-a-dir" / "snap"), LABEL, "", {})
