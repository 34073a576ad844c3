"""Fixtures for the host-side quiesce tests: a real agent, a real engine disk, a CLI runner.

The agent fixture comes from tests/e2e/conftest.py (a daemon over its socket, on
loop-mounted filesystems this test made). Tests that need root say so with ``need_root()``;
the client's own tests run anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from host.engine.disk import Disk


@pytest.fixture
def disk_dir(short_tmp: Path) -> Iterator[Path]:
    """A fresh 64 MiB engine disk folder (closed; tests open it)."""
    folder = short_tmp / "disk"
    Disk.create(folder, 64 << 20).close()
    yield folder


@pytest.fixture
def deltas() -> Callable[[Path], list[str]]:
    def listing(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.name.startswith("disk-0"))

    return listing
