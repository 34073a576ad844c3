"""Files replaced whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.files import atomic_file, atomic_write


def test_a_new_file_replaces_the_old_one_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "backup_label"
    target.write_text("old")
    atomic_write(target, "new", mode=0o600)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup_label"]


def test_a_failure_inside_the_block_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "tree.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as fd:
        os.write(fd, b"half of the new")
        raise RuntimeError("crash in the middle")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree.json"]
