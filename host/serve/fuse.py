"""The disk's current state as one file, ``MOUNTPOINT/disk.raw``, through FUSE (a VM's: one
file per disk, ``MOUNTPOINT/NAME.raw``).

Readable and writable (unless read-only), the size of the disk, ``fsync``/``fdatasync``
flush the device, so Linux can loop-mount a filesystem on it (``mount -o loop``, ``losetup``).
The file is opened with ``direct_io``: no page cache between the kernel and us, so every
write the kernel acknowledges has reached the device (the snapshot cut sees it), a snapshot
never has to chase dirty pages, and requests come in up to 1 MiB (libfuse 3 negotiates
``max_pages``) instead of 4 KiB pages.

The binding is mfusepy (``mfusepy>=3.1``): the maintained fork of fusepy, ctypes over the
system's libfuse 3, pure Python (nothing to compile, no trio), its multi-threaded loop calls us
from several threads at once. pyfuse3 (Cython, an sdist that needs a compiler and
libfuse3-dev on every machine, plus trio) and llfuse (low-level API, more code for one file)
were the alternatives; fusepy itself is unmaintained and libfuse 2 only.

``serve_fuse()`` runs the libfuse loop in the calling (main) thread; libfuse's own handlers
turn SIGTERM, SIGINT and SIGHUP into a clean unmount, after which it returns.

Raises: ``FuseServeError`` when the mount fails (missing /dev/fuse, a stale mount left by a
killed server, a mount point that is not an empty directory).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# mfusepy loads libfuse 2 when it finds one; we want 3 (1 MiB requests, init_with_config)
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # type: ignore[import-untyped]  # noqa: E402

from common.errors import QuiesceError
from host.serve.device import BlockDevice, errno_of

logger = logging.getLogger(__name__)

FILE_NAME = "disk.raw"


class FuseServeError(QuiesceError):
    """The FUSE mount could not be made or ended badly."""

    code = "FuseServeError"
    exit_code = 2


@contextmanager
def _as_oserror(what: str) -> Iterator[None]:
    """A device failure as the errno the kernel passes on (EIO unless a better one fits)."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:
        logger.warning("FUSE: %s failed: %s", what, err)
        raise mfusepy.FuseOSError(errno_of(err)) from err


class DiskFile(mfusepy.Operations):  # type: ignore[misc]
    """One directory, one file per device: ``disk.raw`` for one, ``NAME`` for a mapping."""

    use_ns = True

    def __init__(
        self,
        device: BlockDevice | Mapping[str, BlockDevice],
        readonly: bool = False,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.files: dict[str, BlockDevice] = (
            dict(device) if isinstance(device, Mapping) else {FILE_NAME: device}
        )
        self.readonly = readonly
        self.on_ready = on_ready
        now = time.time_ns()
        self.times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
        self.uid, self.gid = os.getuid(), os.getgid()
        self.ready = threading.Event()

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.direct_io = 1
            config.attr_timeout = 1.0
            config.entry_timeout = 1.0
        self.ready.set()
        if self.on_ready is not None:
            self.on_ready()

    def _device(self, path: str | None) -> BlockDevice:
        """The device behind ``path`` (``None``: the only one)."""
        if path is None and len(self.files) == 1:
            return next(iter(self.files.values()))
        device = self.files.get((path or "").lstrip("/")) if (path or "").count("/") == 1 else None
        if device is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return device

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        base = {"st_uid": self.uid, "st_gid": self.gid, **self.times}
        if path == "/":
            return {**base, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        size = self._device(path).size
        mode = 0o400 if self.readonly else 0o600
        return {
            **base,
            "st_mode": stat.S_IFREG | mode,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 4096,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", *self.files]

    def open(self, path: str, flags: int) -> int:
        self._device(path)
        if self.readonly and flags & (os.O_WRONLY | os.O_RDWR):
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        device = self._device(path)
        end = min(offset + size, device.size)
        if end <= offset:
            return b""
        with _as_oserror(f"read {offset}+{end - offset}"):
            return device.read(offset, end - offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        if self.readonly:
            raise mfusepy.FuseOSError(errno.EROFS)
        device = self._device(path)
        size = device.size
        if offset >= size:
            raise mfusepy.FuseOSError(errno.ENOSPC)  # the disk does not grow
        data = data[: size - offset]
        with _as_oserror(f"write {offset}+{len(data)}"):
            device.write(offset, data)
        self.times["st_mtime"] = time.time_ns()
        return len(data)

    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        if length != self._device(path).size:
            raise mfusepy.FuseOSError(errno.EPERM)  # the size is the disk's, fixed
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with _as_oserror("fsync"):
            self._device(path).flush()
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close(); durability is fsync's job, as for any file

    def release(self, path: str | None, fh: int) -> int:
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        now = time.time_ns()
        atime, mtime = times if times else (now, now)
        self.times.update(st_atime=atime, st_mtime=mtime)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    def chown(self, path: str, uid: int, gid: int) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    def statfs(self, path: str) -> dict[str, int]:
        blocks = (sum(d.size for d in self.files.values()) + 4095) // 4096
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_namemax": 255}


def serve_fuse(
    device: BlockDevice | Mapping[str, BlockDevice],
    mountpoint: str,
    *,
    readonly: bool = False,
    on_ready: Callable[[], None] | None = None,
    fsname: str = "quiesce",
) -> None:
    """Mount ``device`` as ``mountpoint/disk.raw`` (a mapping: one file per name) and serve
    it until unmounted or signalled.

    Blocks the calling thread, which must be the main thread for the signal handling.
    Raises FuseServeError when the mount fails.
    """
    if not os.path.isdir(mountpoint):
        raise FuseServeError(f"mount point {mountpoint}: not a directory (create it first)")
    try:
        os.listdir(mountpoint)
    except OSError as err:
        raise FuseServeError(
            f"mount point {mountpoint}: {err.strerror}; a server that was killed may have left "
            f"it mounted: run 'fusermount3 -u {mountpoint}'"
        ) from err
    ops = DiskFile(device, readonly=readonly, on_ready=on_ready)
    options: dict[str, Any] = {
        "foreground": True,
        "direct_io": True,
        "fsname": fsname.replace(",", "_"),
        "subtype": "quiesce",
        "default_permissions": True,
    }
    if readonly:
        options["ro"] = True
    try:
        mfusepy.FUSE(ops, mountpoint, raw_fi=False, **options)
    except RuntimeError as err:
        if ops.ready.is_set():
            # libfuse >= 3.12 returns non-zero when a signal ended the loop: a normal stop
            logger.debug("FUSE loop on %s ended with libfuse status %s", mountpoint, err)
            return
        raise FuseServeError(
            f"FUSE mount on {mountpoint} failed (libfuse status {err}); is /dev/fuse there, "
            "fusermount3 installed, and the mount point an empty directory?"
        ) from err
    if not ops.ready.is_set():
        raise FuseServeError(f"FUSE mount on {mountpoint} never came up")
