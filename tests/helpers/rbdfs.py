"""Filesystems on RBD images for the tests: QEMU's rbd driver serves them, ext4 on each.

This kernel has neither krbd nor nbd (``CONFIG_BLK_DEV_RBD``, ``CONFIG_BLK_DEV_NBD`` not set),
so an image reaches the kernel the way a VM's disk does on a Ceph hypervisor, through QEMU's
rbd driver: one ``qemu-storage-daemon`` (the "VM": one librbd client holding every image's
exclusive lock, as QEMU does) exports each image as a FUSE file (``--export type=fuse``),
and ext4 is loop-mounted on that file under FREEZE_ROOT, so the agent may freeze it. Writes
go loop -> FUSE -> QEMU's block layer -> librbd; a flush (the journal's, FIFREEZE's) reaches
librbd as a flush (QEMU's fuse export turns fsync into ``blk_flush``).

``stop()`` unmounts and ends the daemon (the "VM is stopped"): the images are then free for a
rollback; ``start()`` + ``mount()`` again "boots" it on whatever the images now hold.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from host.lab.procs import kill_group, tail
from tests.helpers.ceph import Cluster
from tests.helpers.env import FREEZE_ROOT, need, need_root


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


class RbdDisks:
    """``images`` of ``cluster``'s pool served as files by one qemu-storage-daemon, each with
    ext4 loop-mounted at ``mounts[name]`` (under FREEZE_ROOT)."""

    def __init__(self, cluster: Cluster, images: list[str]) -> None:
        need_root()
        need(
            shutil.which("qemu-storage-daemon") is not None
            and bool(glob.glob("/usr/lib/*/qemu/block-rbd.so")),
            "qemu-storage-daemon with QEMU's rbd driver is not installed (scripts/setup "
            "installs qemu-system-common and qemu-block-extra)",
        )
        self.cluster = cluster
        self.images = images
        self.dir = Path(tempfile.mkdtemp(prefix="rbdfs-", dir=FREEZE_ROOT))
        self.files = {name: self.dir / f"{name}.raw" for name in images}
        self.mounts = {name: self.dir / "mnt" / name for name in images}
        self.log = self.dir / "qsd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> RbdDisks:
        """Start the daemon and wait until every export is a file of the image's size."""
        cmd = ["qemu-storage-daemon"]
        for i, name in enumerate(self.images):
            self.files[name].touch()
            cmd += [
                "--blockdev",
                f"driver=rbd,node-name=n{i},pool={self.cluster.pool},image={name},"
                f"conf={self.cluster.conf},user=admin,cache.direct=off",
                "--export",
                f"type=fuse,id=e{i},node-name=n{i},mountpoint={self.files[name]},writable=on",
            ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not all(_mounted(f) for f in self.files.values()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"qemu-storage-daemon did not export the images:\n{tail(self.log)}"
                )
            time.sleep(0.05)
        return self

    def mkfs(self) -> RbdDisks:
        for f in self.files.values():
            subprocess.run(["mkfs.ext4", "-q", "-F", str(f)], check=True, timeout=120,
                           capture_output=True)  # fmt: skip
        return self

    def mount(self) -> RbdDisks:
        for name, mnt in self.mounts.items():
            mnt.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-o", "loop", str(self.files[name]), str(mnt)],
                           check=True, timeout=60, capture_output=True)  # fmt: skip
        return self

    def umount(self) -> None:
        for mnt in self.mounts.values():
            if _mounted(mnt):
                # thaw first in case a test failed while frozen; EINVAL (not frozen) is fine
                subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True, timeout=10)
                subprocess.run(["umount", str(mnt)], check=True, timeout=60, capture_output=True)

    def stop(self) -> None:
        """Unmount, then end the daemon (its SIGTERM flushes and closes every image)."""
        self.umount()
        if self.proc is not None:
            kill_group(self.proc, grace=20.0)
            self.proc = None
        for f in self.files.values():  # a killed daemon can leave its FUSE mount behind
            if _mounted(f):
                subprocess.run(["umount", "-l", str(f)], capture_output=True, timeout=30)

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
