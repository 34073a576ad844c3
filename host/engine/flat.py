"""The base of a disk: ``disk.vmdk`` (a monolithicFlat descriptor) + ``disk-flat.vmdk`` (the
raw data, preallocated so that a merge into it never runs out of space).

The descriptor is replaced whole (``atomic_write``) when its CID changes; the data is
written in place, and ``punch_hole`` deallocates zeroed ranges.

Raises ForeignFile (not a monolithicFlat base), CorruptFile (truncated, wrong size),
ChainFileMissing (the descriptor cannot be read), DiskError and NoSpace.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host.engine.descriptor import Descriptor, parse_descriptor
from host.engine.durable import atomic_write, pwrite_all
from host.engine.errors import ChainFileMissing, CorruptFile, ForeignFile, space_error
from host.engine.names import BASE_NAME, FLAT_NAME, NO_PARENT, inside, new_cid, safe_name
from host.engine.sparse import MAGIC, SECTOR  # the unit of every VMDK; KDMV marks a delta

MAX_DESCRIPTOR_FILE = 64 * 1024
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


class FlatBase:
    """``disk.vmdk`` (monolithicFlat descriptor) + ``disk-flat.vmdk`` (raw data)."""

    kind = "flat"

    def __init__(self, folder: Path, size: int, writable: bool) -> None:
        self.folder = folder
        self.name = BASE_NAME
        self.path = inside(folder, BASE_NAME, folder / BASE_NAME)
        self.writable = writable
        self.cid_bumped = False
        desc = self.read_descriptor()
        if desc.create_type != "monolithicFlat":
            raise ForeignFile(
                f"{self.path}: createType is {desc.create_type!r}, expected "
                "'monolithicFlat' for the base",
                self.path,
            )
        if len(desc.extents) != 1 or desc.extents[0][2] != "FLAT" or desc.extents[0][4] != 0:
            raise ForeignFile(
                f"{self.path}: the base must have exactly one FLAT extent at offset 0", self.path
            )
        access, sectors, _, flat, _ = desc.extents[0]
        if sectors * SECTOR != size:
            raise CorruptFile(
                f"{self.path}: the extent has {sectors} sectors but the disk is {size} bytes",
                self.path,
            )
        safe_name(folder, flat, "FLAT extent", self.path)
        self.flat_path = inside(folder, flat, self.path)
        try:
            self.fd = os.open(
                self.flat_path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW
            )
        except OSError as err:
            raise CorruptFile(
                f"{self.flat_path}: cannot open the base's flat extent: {err.strerror}",
                self.flat_path,
            ) from err
        have = os.fstat(self.fd).st_size
        if have < size:
            os.close(self.fd)
            raise CorruptFile(
                f"{self.flat_path}: truncated: {have} bytes, the descriptor says {size}",
                self.flat_path,
            )
        self.size = size

    @classmethod
    def create(
        cls,
        folder: Path,
        size: int,
        preallocate: bool = True,
        source: Path | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> None:
        """A new base of ``size`` bytes: zeros, or the raw bytes of ``source`` (a raw image
        no larger than ``size``; its holes stay holes, the rest reads as zeros)."""
        flat = folder / FLAT_NAME
        try:
            fd = os.open(flat, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if source is not None:
                    copy_raw(source, fd, progress)
                os.ftruncate(fd, size)
                try:  # a preallocated flat extent: merges into it never hit ENOSPC
                    if preallocate:
                        os.posix_fallocate(fd, 0, size)
                except OSError as err:
                    if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            flat.unlink(missing_ok=True)
            raise space_error(err, flat, "creating the flat extent") from err
        desc = Descriptor(
            new_cid(),
            NO_PARENT,
            "monolithicFlat",
            None,
            [("RW", size // SECTOR, "FLAT", FLAT_NAME, 0)],
        )
        atomic_write(folder / BASE_NAME, desc.render())

    def read_descriptor(self) -> Descriptor:
        try:
            with open(self.path, "rb") as f:
                text = f.read(MAX_DESCRIPTOR_FILE + 1)
        except OSError as err:
            raise ChainFileMissing(
                f"{self.path}: cannot read the base descriptor: {err.strerror}", self.path
            ) from err
        if len(text) > MAX_DESCRIPTOR_FILE or text[:4] == MAGIC:
            raise ForeignFile(
                f"{self.path}: not a descriptor file (expected the text "
                "descriptor of a monolithicFlat base)",
                self.path,
            )
        return parse_descriptor(text, self.path)

    def read_cid(self) -> int:
        return self.read_descriptor().cid

    def set_cid(self, cid: int) -> None:
        desc = self.read_descriptor()
        desc.cid = cid
        atomic_write(self.path, desc.render())

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise CorruptFile(
                f"{self.flat_path}: short read at {offset} (file truncated?)", self.flat_path
            )
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        try:
            pwrite_all(self.fd, data, offset)
        except OSError as err:
            raise space_error(err, self.flat_path, "writing to the base") from err

    def punch(self, offset: int, length: int) -> bool:
        """Deallocate an aligned range (reads as zeros); False if the filesystem can't."""
        return punch_hole(self.fd, offset, length)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# the process already has libc loaded: CDLL(None) finds fallocate there without
# ctypes.util.find_library, which runs ldconfig (about 20 ms at every start)
_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


HEADER_PROBE = 512  # bytes of an image read to tell its format
_FORMATS = (  # (offset, magic, name): the headers qemu-img probes for, none of them raw
    (0, b"QFI\xfb", "qcow2"),
    (0, b"QED\x00", "qed"),
    (0, b"KDMV", "VMDK (sparse extent)"),
    (0, b"COWD", "VMDK (ESX sparse extent)"),
    (0, b"# Disk DescriptorFile", "VMDK (descriptor)"),
    (0, b"vhdxfile", "VHDX"),
    (0, b"conectix", "VHD"),
    (0x40, b"\x7f\x10\xda\xbe", "VDI"),
)


def image_format(head: bytes) -> str | None:
    """The format an image's first ``HEADER_PROBE`` bytes name, None for raw (anything else:
    a raw disk holds any bytes, a partition table, LUKS, a filesystem)."""
    for offset, magic, name in _FORMATS:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def copy_raw(source: Path, fd: int, progress: Callable[[int, int], Any] | None = None) -> None:
    """Copy the raw image ``source`` into the empty file ``fd``: a clone (FICLONE: shared
    extents, instant) where the filesystem has them, else only its data ranges
    (SEEK_DATA/SEEK_HOLE) with copy_file_range, so a sparse image stays sparse. A block
    device (an LVM volume, say) is read whole, its zero chunks left as holes.
    ``progress(done, total)`` is told the offset reached, in bytes of the image."""
    with open(source, "rb") as src:
        st = os.fstat(src.fileno())
        if stat.S_ISBLK(st.st_mode):
            _copy_device(source, src.fileno(), fd, progress)
            return
        end = st.st_size
        try:
            fcntl.ioctl(fd, FICLONE, src.fileno())
            if progress:
                progress(end, end)
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                raise
        pos = 0
        while pos < end:
            try:
                pos = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            stop = os.lseek(src.fileno(), pos, os.SEEK_HOLE)
            while pos < stop:
                done = os.copy_file_range(src.fileno(), fd, stop - pos, pos, pos)
                if done == 0:
                    raise OSError(errno.EIO, f"{source}: shorter than it said ({pos} bytes)")
                pos += done
                if progress:
                    progress(pos, end)
        os.ftruncate(fd, end)
        if progress:
            progress(end, end)


DEVICE_CHUNK = 4 * 1024 * 1024  # bytes read from a device at a time


def source_size(src: int) -> int:
    """The bytes of an open image: a file's size, or a block device's (stat says 0)."""
    return os.lseek(src, 0, os.SEEK_END)


def _copy_device(
    source: Path, src: int, fd: int, progress: Callable[[int, int], Any] | None
) -> None:
    """A block device into ``fd`` chunk by chunk (copy_file_range takes no devices); a chunk
    of zeros is not written, so what the device never used stays a hole."""
    end, pos = source_size(src), 0
    zero = bytes(DEVICE_CHUNK)
    while pos < end:
        chunk = os.pread(src, min(DEVICE_CHUNK, end - pos), pos)
        if not chunk:
            raise OSError(errno.EIO, f"{source}: shorter than it said ({pos} bytes)")
        if chunk != zero[: len(chunk)]:
            pwrite_all(fd, chunk, pos)
        pos += len(chunk)
        if progress:
            progress(pos, end)
    os.ftruncate(fd, end)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    fallocate = _libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return bool(fallocate(fd, _FALLOC_PUNCH, offset, length) == 0)
