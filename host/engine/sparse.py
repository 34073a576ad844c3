"""A delta of a disk: ``disk-NNNNNN.vmdk``, a monolithicSparse (KDMV) extent, version 1, 64 KiB
grains (grainSize 128), 512 entries per grain table, the descriptor at sector 1 owning sectors
1-20, a redundant grain directory and tables, then the primary ones, every grain table
allocated at creation (qemu never allocates one), grains appended grain-aligned at the end.
The exact layout and its crash states are in ``docs/internals/disk-format.md``.

Durability: a grain table entry is written (primary table, then redundant table) only after
the data it points to was ``fdatasync``-ed. Writes that allocate grains keep their entries in
memory and in a pending log (``host.engine.durable.PendingLog``) until the next flush, so that they
need no fsync each and still survive the death of the process.

``read_header`` refuses a header the engine cannot use; ``Layout`` says where a new delta's
parts go; the examination of damage that open tolerates is ``check.sparse_problems``.

Raises ForeignFile (not a file we can use), CorruptFile (damaged), ChainFileMissing (the
file cannot be opened), DiskError, NoSpace.
"""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from common.files import atomic_file
from host.engine.descriptor import Descriptor, parse_descriptor
from host.engine.durable import PendingLog, pending_log_path, pwrite_all
from host.engine.errors import ChainFileMissing, CorruptFile, DiskError, ForeignFile, space_error
from host.engine.names import new_cid

SECTOR = 512
GRAIN_SECTORS = 128
GRAIN = GRAIN_SECTORS * SECTOR  # 64 KiB
GTES = 512  # entries per grain table
GT_BYTES = GTES * 4
GT_SECTORS = GT_BYTES // SECTOR
DESC_OFFSET = 1
DESC_SECTORS = 20  # qemu reads and rewrites a 10240-byte window at sector 1
MAGIC = b"KDMV"
FLAG_NEWLINE = 1  # bit0: the newline-detection bytes are valid
FLAG_RGD = 2  # bit1: redundant grain directory and tables are kept
FLAG_ZEROED = 4  # bit2 (v2+): GTE 1 means a zeroed grain
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
MAX_CAPACITY = (2**32 - 1) * SECTOR // GRAIN * GRAIN  # u32 sector offsets in the tables

HEADER = struct.Struct("<4sIIQQQQIQQQB4sH433x")
assert HEADER.size == SECTOR
EOL_BYTES = b"\n \r\n"

ZERO_GRAIN = bytes(GRAIN)


@dataclass
class Layout:
    """Where everything sits in a sparse delta of ``capacity`` sectors (all in sectors)."""

    capacity: int
    num_gts: int
    rgd: int
    rgt: int
    gd: int
    gt: int
    overhead: int

    @classmethod
    def of(cls, capacity: int) -> Layout:
        num_gts = -(-capacity // (GTES * GRAIN_SECTORS))
        gd_sectors = -(-num_gts * 4 // SECTOR)
        rgd = DESC_OFFSET + DESC_SECTORS
        rgt = rgd + gd_sectors
        gd = rgt + num_gts * GT_SECTORS
        gt = gd + gd_sectors
        end = gt + num_gts * GT_SECTORS
        overhead = -(-end // GRAIN_SECTORS) * GRAIN_SECTORS
        return cls(capacity, num_gts, rgd, rgt, gd, gt, overhead)


class Header(NamedTuple):
    """The fields of a sparse extent's first sector (``HEADER``), in sectors where a count."""

    magic: bytes
    version: int
    flags: int
    capacity: int
    grain: int
    desc_off: int
    desc_size: int
    ngtes: int
    rgd: int
    gd: int
    overhead: int
    unclean: int
    eol: bytes
    compress: int


def read_header(fd: int, path: Path, size: int, file_size: int) -> Header:
    """The header of the sparse extent open at ``fd``, refused unless this engine can use it
    for a disk of ``size`` bytes (ForeignFile: another format; CorruptFile: damaged)."""
    raw = os.pread(fd, SECTOR, 0)
    if len(raw) < SECTOR:
        raise CorruptFile(f"{path}: truncated: {file_size} bytes, shorter than a header", path)
    h = Header._make(HEADER.unpack(raw))
    if h.magic != MAGIC:
        raise ForeignFile(f"{path}: bad magic {h.magic!r}, not a KDMV sparse extent", path)
    if h.version not in (1, 2):
        raise ForeignFile(f"{path}: sparse version {h.version} is not supported (1 or 2)", path)
    if h.flags & (FLAG_COMPRESSED | FLAG_MARKERS) or h.compress:
        raise ForeignFile(f"{path}: compressed/streamOptimized extents are not supported", path)
    if h.grain != GRAIN_SECTORS or h.ngtes != GTES:
        raise ForeignFile(
            f"{path}: grainSize {h.grain} / {h.ngtes} GTEs per table; only "
            f"{GRAIN_SECTORS} / {GTES} (64 KiB grains) are supported",
            path,
        )
    if h.capacity * SECTOR != size:
        raise CorruptFile(
            f"{path}: capacity {h.capacity} sectors differs from the disk's {size // SECTOR}",
            path,
        )
    if h.desc_off != DESC_OFFSET or h.desc_size < DESC_SECTORS:
        raise CorruptFile(
            f"{path}: the descriptor must sit at sector 1 and own sectors "
            f"1-20 (offset {h.desc_off}, size {h.desc_size})",
            path,
        )
    if h.overhead * SECTOR > file_size:
        raise CorruptFile(
            f"{path}: truncated: {file_size} bytes, the metadata alone needs {h.overhead * SECTOR}",
            path,
        )
    return h


class SparseExtent:
    """One monolithicSparse delta, its grain tables held in memory.

    ``gt[g]`` is the sector of grain ``g`` in this file, 0 when the grain is not here (read
    the parent), or 1 for a zeroed grain (only in version-2 files with flag bit2).
    """

    kind = "sparse"

    def __init__(self, path: Path, writable: bool, size: int) -> None:
        self.path = path
        self.name = path.name
        self.writable = writable
        self.cid_bumped = False
        self.pending: dict[int, int] = {}  # grain -> sector, in memory and log, not in table
        self.log = PendingLog(pending_log_path(path))
        try:
            self.fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW)
        except OSError as err:
            raise ChainFileMissing(f"{path}: cannot open the delta: {err.strerror}", path) from err
        try:
            self._load(size)
        except BaseException:
            os.close(self.fd)
            raise

    def _load(self, size: int) -> None:
        file_size = os.fstat(self.fd).st_size
        h = read_header(self.fd, self.path, size, file_size)
        self.version, self.flags, self.capacity = h.version, h.flags, h.capacity
        self.overhead = overhead = h.overhead
        self.zeroed = bool(h.flags & FLAG_ZEROED) and h.version >= 2
        self.num_grains = -(-h.capacity // GRAIN_SECTORS)
        num_gts = -(-h.capacity // (GTES * GRAIN_SECTORS))
        self.gde = self._read_directory(h.gd, num_gts, overhead, "grain directory")
        self.rgde: list[int] = []
        if h.flags & FLAG_RGD and h.rgd:
            self.rgde = self._read_directory(h.rgd, num_gts, overhead, "redundant grain directory")
        tables = b"".join(os.pread(self.fd, GT_BYTES, s * SECTOR) for s in self.gde)
        if self.writable and self.rgde:
            self._repair_redundant(tables)
        gt = array("I")
        gt.frombytes(tables)
        if gt.itemsize != 4:  # pragma: no cover - every Linux ABI has 4-byte unsigned int
            raise DiskError("array('I') is not 32-bit here")
        del gt[self.num_grains :]
        self.gt = gt
        file_sectors = file_size // SECTOR
        self._check_entries(file_sectors)
        self.next_sector = max(overhead, -(-file_sectors // GRAIN_SECTORS) * GRAIN_SECTORS)
        self._replay(file_sectors)

    def _replay(self, file_sectors: int) -> None:
        """Take back the entries of writes acknowledged before a crash (same boot only)."""
        records, stale = self.log.load()
        for g, s in records:
            if (
                g < self.num_grains
                and s >= self.overhead
                and s % GRAIN_SECTORS == 0
                and s + GRAIN_SECTORS <= file_sectors
            ):
                self.gt[g] = s
                self.pending[g] = s
        if self.writable:
            if self.pending:
                self.commit()
            if stale or records:
                self.log.close(remove=True)

    def _repair_redundant(self, tables: bytes) -> None:
        """A crash between the primary and the redundant table write leaves them different:
        the primary is the truth (written first), so copy it over."""
        for t, sector in enumerate(self.rgde):
            primary = tables[t * GT_BYTES : (t + 1) * GT_BYTES]
            if os.pread(self.fd, GT_BYTES, sector * SECTOR) != primary:
                try:
                    pwrite_all(self.fd, primary, sector * SECTOR)
                except OSError as err:
                    raise space_error(err, self.path, "repairing a redundant table") from err

    def _read_directory(self, start: int, count: int, overhead: int, what: str) -> list[int]:
        if start < DESC_OFFSET + DESC_SECTORS or start + -(-count * 4 // SECTOR) > overhead:
            raise CorruptFile(
                f"{self.path}: the {what} at sector {start} lies outside the "
                f"metadata area (sectors 21-{overhead})",
                self.path,
            )
        raw = os.pread(self.fd, count * 4, start * SECTOR)
        if len(raw) != count * 4:
            raise CorruptFile(
                f"{self.path}: the {what} at sector {start} is missing or truncated", self.path
            )
        entries = list(struct.unpack(f"<{count}I", raw))
        for i, s in enumerate(entries):
            if s <= DESC_OFFSET + DESC_SECTORS - 1 or s + GT_SECTORS > overhead:
                raise CorruptFile(
                    f"{self.path}: {what} entry {i} points to sector {s}, "
                    "outside the metadata area (a missing or bad grain table)",
                    self.path,
                )
        return entries

    def _check_entries(self, file_sectors: int) -> None:
        gt = self.gt
        if not gt:
            return
        top = max(gt)
        lowest = min((s for s in gt if s > 1), default=self.overhead)
        ones = self.zeroed or 1 not in gt
        if top + GRAIN_SECTORS <= file_sectors and lowest >= self.overhead and ones:
            return
        for g, s in enumerate(gt):
            if s == 0 or (s == 1 and self.zeroed):
                continue
            if s + GRAIN_SECTORS > file_sectors:
                raise CorruptFile(
                    f"{self.path}: grain table entry for grain {g} points to "
                    f"sector {s}, past the end of the file ({file_sectors} "
                    "sectors)",
                    self.path,
                )
            if s < self.overhead:
                raise CorruptFile(
                    f"{self.path}: grain table entry for grain {g} points to "
                    f"sector {s}, inside the metadata",
                    self.path,
                )

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, size: int, parent_cid: int, parent_hint: str) -> None:
        """Write a new empty delta at ``path`` atomically (``atomic_file``: a temp file whose
        header, descriptor and tables are written in place, fsync, rename, folder fsync)."""
        capacity = size // SECTOR
        lay = Layout.of(capacity)
        header = HEADER.pack(
            MAGIC,
            1,
            FLAG_NEWLINE | FLAG_RGD,
            capacity,
            GRAIN_SECTORS,
            DESC_OFFSET,
            DESC_SECTORS,
            GTES,
            lay.rgd,
            lay.gd,
            lay.overhead,
            0,
            EOL_BYTES,
            0,
        )
        desc = Descriptor(
            new_cid(),
            parent_cid,
            "monolithicSparse",
            parent_hint,
            [("RW", capacity, "SPARSE", path.name, 0)],
        ).render()
        if len(desc) > DESC_SECTORS * SECTOR - 1:
            raise DiskError(f"{path}: descriptor too long ({len(desc)} bytes)", path)
        rgd = struct.pack(
            f"<{lay.num_gts}I", *(lay.rgt + i * GT_SECTORS for i in range(lay.num_gts))
        )
        gd = struct.pack(f"<{lay.num_gts}I", *(lay.gt + i * GT_SECTORS for i in range(lay.num_gts)))
        try:
            with atomic_file(path) as fd:
                os.ftruncate(fd, lay.overhead * SECTOR)
                for data, sector in (
                    (header, 0),
                    (desc, DESC_OFFSET),
                    (rgd, lay.rgd),
                    (gd, lay.gd),
                ):
                    pwrite_all(fd, data, sector * SECTOR)
        except OSError as err:
            raise space_error(err, path, "creating a delta") from err

    # -- descriptor -----------------------------------------------------------------------

    def read_descriptor_bytes(self) -> bytes:
        return os.pread(self.fd, DESC_SECTORS * SECTOR, DESC_OFFSET * SECTOR)

    def read_descriptor(self) -> Descriptor:
        return parse_descriptor(self.read_descriptor_bytes(), self.path)

    def read_cid(self) -> int:
        return self.read_descriptor().cid

    def write_descriptor(self, desc: Descriptor) -> None:
        """Rewrite the descriptor window in place (it fits in one sector in practice)."""
        text = desc.render()
        if len(text) > DESC_SECTORS * SECTOR - 1:
            raise DiskError(f"{self.path}: descriptor too long ({len(text)} bytes)", self.path)
        window = text + bytes(-len(text) % SECTOR)
        try:
            old = self.read_descriptor_bytes()
            end = len(old.split(b"\0", 1)[0])
            if end > len(window):  # zero the rest of a longer old text
                window += bytes(-(-end // SECTOR) * SECTOR - len(window))
            pwrite_all(self.fd, window, DESC_OFFSET * SECTOR)
            os.fsync(self.fd)
        except OSError as err:
            raise space_error(err, self.path, "rewriting the descriptor") from err

    def set_cid(self, cid: int) -> None:
        desc = self.read_descriptor()
        desc.cid = cid
        self.write_descriptor(desc)

    def set_parent(self, parent_cid: int, hint: str) -> None:
        desc = self.read_descriptor()
        desc.parent_cid, desc.parent_hint = parent_cid, hint
        self.write_descriptor(desc)

    # -- data -----------------------------------------------------------------------------

    def read_at(self, sector: int, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, sector * SECTOR + offset)
        if len(data) != length:
            raise CorruptFile(
                f"{self.path}: short read at sector {sector} (file truncated?)", self.path
            )
        return data

    def overwrite(self, g: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write inside grain ``g``, which must already be allocated in this file."""
        pos = self.gt[g] * SECTOR + offset
        try:
            n = os.pwrite(self.fd, data, pos)
            if n != len(data):
                pwrite_all(self.fd, memoryview(data)[n:], pos + n)
        except OSError as err:
            raise space_error(err, self.path, "writing a grain") from err

    def append_grains(
        self, grains: list[tuple[int, bytes | bytearray | memoryview]], durable: bool = True
    ) -> None:
        """Allocate whole grains at the end of the file.

        ``durable``: data, fdatasync, then the primary and redundant table entries. Otherwise
        the entries go to the pending log and reach the tables at the next ``commit`` (flush).
        On failure nothing points at the new data and the file is cut back to its old end.
        """
        if not grains:
            return
        start = self.next_sector
        old_size = os.fstat(self.fd).st_size
        records = [(g, start + i * GRAIN_SECTORS) for i, (g, _) in enumerate(grains)]
        try:
            pwrite_all(
                self.fd,
                grains[0][1] if len(grains) == 1 else b"".join(d for _, d in grains),
                start * SECTOR,
            )
            if durable:
                os.fdatasync(self.fd)
            else:
                self.log.append(records)
        except OSError as err:
            try:
                os.ftruncate(self.fd, old_size)
            except OSError:
                pass
            raise space_error(err, self.path, "allocating grains") from err
        for g, s in records:
            self.gt[g] = s
        self.next_sector = start + len(grains) * GRAIN_SECTORS
        if durable:
            self._write_tables({g // GTES for g, _ in records})
        else:
            self.pending.update(records)
            if len(self.pending) >= 16384:  # keep the log and a crash replay short
                self.commit()

    def commit(self) -> None:
        """Pending entries into the tables: fdatasync the data first, then write them."""
        if not self.pending:
            return
        try:
            os.fdatasync(self.fd)
            self._write_tables({g // GTES for g in self.pending})
            os.fdatasync(self.fd)
            self.pending.clear()
            self.log.reset()
        except OSError as err:
            raise space_error(err, self.path, "writing grain tables") from err

    def _write_tables(self, tables: set[int]) -> None:
        try:
            for directory in (self.gde, self.rgde):
                for t in sorted(tables):
                    if directory:
                        pwrite_all(
                            self.fd,
                            self.gt[t * GTES : (t + 1) * GTES].tobytes().ljust(GT_BYTES, b"\0"),
                            directory[t] * SECTOR,
                        )
        except OSError as err:
            raise space_error(err, self.path, "writing grain tables") from err

    def read_table(self, sector: int) -> array[int]:
        t = array("I")
        t.frombytes(os.pread(self.fd, GT_BYTES, sector * SECTOR))
        return t

    def sync(self) -> None:
        self.commit()
        os.fsync(self.fd)

    def close(self) -> None:
        """Close; the pending log stays only if entries are still pending (a crash-like end)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.log.close(remove=self.writable and not self.pending)
