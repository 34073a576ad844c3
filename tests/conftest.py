"""Suite-wide fixtures and the freeze safety net.

Before anything else is imported, the suite confines FIFREEZE to one directory it made
itself (QUIESCE_FREEZE_ONLY_UNDER, enforced by hooks/fsfreeze.py in this process and in every
daemon or guard it starts): no test can freeze this machine's root filesystem, not even by
reaching ``filesystems.mounts: auto``, which is refused outright while the variable is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

FREEZE_ROOT = tempfile.mkdtemp(prefix="quiesce-test-mnt-")
os.environ["QUIESCE_FREEZE_ONLY_UNDER"] = FREEZE_ROOT
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

REQUIRE = os.environ.get("QUIESCE_REQUIRE_SERVERS") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip with ``reason`` unless the CI demands everything (QUIESCE_REQUIRE_SERVERS=1)."""
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"required for CI: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root for loop devices and FIFREEZE")


class LoopFS:
    """A filesystem on a loop-mounted image that this test made, under FREEZE_ROOT."""

    def __init__(self, fstype: str, size_mb: int = 300) -> None:
        need_root()
        mkfs = shutil.which(f"mkfs.{fstype}")
        need(mkfs is not None, f"mkfs.{fstype} is not installed (scripts/setup installs it)")
        self.fstype = fstype
        self.dir = Path(tempfile.mkdtemp(prefix=f"{fstype}-", dir=FREEZE_ROOT))
        self.image = self.dir / "image"
        self.mountpoint = self.dir / "mnt"
        self.mountpoint.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        quiet = ["-q"] if fstype == "xfs" else ["-q", "-F"]
        subprocess.run([mkfs, *quiet, str(self.image)], check=True, timeout=60)
        subprocess.run(
            ["mount", "-o", "loop", str(self.image), str(self.mountpoint)], check=True, timeout=30
        )

    @property
    def path(self) -> str:
        return str(self.mountpoint)

    def cleanup(self) -> None:
        # thaw first in case a test failed while frozen; EINVAL (not frozen) is fine
        subprocess.run(["fsfreeze", "-u", self.path], capture_output=True, timeout=10)
        subprocess.run(["umount", "-l", self.path], capture_output=True, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


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
