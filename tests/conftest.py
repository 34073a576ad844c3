"""Suite-wide fixtures. Importing tests.helpers.env sets the freeze safety net for the run."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.env import FREEZE_ROOT
from tests.helpers.loopfs import LoopFS


@pytest.fixture
def make_fs() -> Iterator[object]:
    """Factory: ``make_fs("ext4")`` gives a fresh loop-mounted LoopFS, removed afterwards."""
    made: list[LoopFS] = []

    def factory(fstype: str = "ext4", size_mb: int = 300) -> LoopFS:
        fs = LoopFS(fstype, size_mb)
        made.append(fs)
        return fs

    yield factory
    for fs in reversed(made):
        fs.cleanup()


@pytest.fixture
def ext4(make_fs: object) -> LoopFS:
    return make_fs("ext4")  # type: ignore[operator]


@pytest.fixture
def xfs(make_fs: object) -> LoopFS:
    return make_fs("xfs")  # type: ignore[operator]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp path (unix socket paths are limited to 107 bytes)."""
    d = Path("/tmp") / f"qa-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(FREEZE_ROOT, ignore_errors=True)
