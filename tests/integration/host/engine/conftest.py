"""Fixtures for the delta-disk engine: a fresh disk folder, and a disk made in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from host.engine.disk import Disk
from tests.helpers.disks import SIZE


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "disk"


@pytest.fixture
def disk(folder: Path) -> Iterator[Disk]:
    d = Disk.create(folder, SIZE)
    yield d
    d.close()
