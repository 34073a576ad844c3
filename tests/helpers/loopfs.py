"""A filesystem on a loop-mounted image that the test made itself, under FREEZE_ROOT."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers.env import FREEZE_ROOT, need, need_root


class LoopFS:
    """A filesystem of ``fstype`` on a fresh image, loop-mounted under FREEZE_ROOT."""

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
