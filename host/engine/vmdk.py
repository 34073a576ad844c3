"""The VMware hosted-disk files the engine keeps: a flat base and sparse (KDMV) deltas.

A disk folder holds ``disk.vmdk`` (a monolithicFlat descriptor) + ``disk-flat.vmdk`` (the
raw base) and one ``disk-NNNNNN.vmdk`` per delta: a monolithicSparse extent, version 1, 64 KiB
grains (grainSize 128), 512 entries per grain table, the descriptor at sector 1 owning sectors
1-20, a redundant grain directory and tables, then the primary ones, every grain table
allocated at creation (qemu never allocates one), grains appended grain-aligned at the end.
The exact layout and its crash states are in ``docs/internals/disk-format.md``.

Durability: a grain table entry is written (primary table, then redundant table) only after
the data it points to was ``fdatasync``-ed. Writes that allocate grains keep their entries in
memory and in a pending log (``host.engine.durable.PendingLog``) until the next flush, so that they
need no fsync each and still survive the death of the process.

Raises ForeignFile (not a file we can use), CorruptFile (damaged), DiskError, NoSpace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import struct
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from host.engine.durable import (
    PendingLog,
    atomic_write,
    fsync_dir,
    pending_log_path,
    pwrite_all,
)
from host.engine.errors import ChainFileMissing, CorruptFile, DiskError, ForeignFile, space_error

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
NO_PARENT = 0xFFFFFFFF
MAX_CAPACITY = (2**32 - 1) * SECTOR // GRAIN * GRAIN  # u32 sector offsets in the tables
BASE_NAME = "disk.vmdk"
FLAT_NAME = "disk-flat.vmdk"
MAX_DESCRIPTOR_FILE = 64 * 1024

HEADER = struct.Struct("<4sIIQQQQIQQQB4sH433x")
assert HEADER.size == SECTOR
EOL_BYTES = b"\n \r\n"

ZERO_GRAIN = bytes(GRAIN)

# a layer file name: no slashes, no leading dot, ends in .vmdk
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,200}\.vmdk$")


def new_cid() -> int:
    """A random content ID; never 0xffffffff (which means "no parent")."""
    while True:
        cid = secrets.randbits(32)
        if cid != NO_PARENT:
            return cid


def safe_name(folder: Path, name: str, what: str, owner: Path) -> str:
    """Refuse a file name that could resolve outside the disk folder (path traversal)."""
    candidate = Path(name)
    if candidate.is_absolute() or "/" in name or "\\" in name or not SAFE_NAME.match(name):
        resolved = (owner.parent / candidate).resolve()
        raise ForeignFile(
            f"{owner}: {what} {name!r} is not a plain file name in the disk folder "
            f"(resolves to {resolved}); refusing to follow it",
            owner,
        )
    return name


def inside(folder: Path, name: str, owner: Path) -> Path:
    """``folder/name``, refusing symlinks that lead out of the folder."""
    path = folder / name
    if path.is_symlink() and path.resolve().parent != folder.resolve():
        raise ForeignFile(
            f"{owner}: {name} is a symlink out of the disk folder "
            f"(to {path.resolve()}); refusing to follow it",
            owner,
        )
    return path


# ---------------------------------------------------------------- descriptor text


@dataclass
class Descriptor:
    cid: int
    parent_cid: int = NO_PARENT
    create_type: str = "monolithicSparse"
    parent_hint: str | None = None
    extents: list[tuple[str, int, str, str, int]] = field(default_factory=list)
    # (access, sectors, type, file name, offset)

    def render(self) -> bytes:
        sectors = self.extents[0][1] if self.extents else 0
        lines = [
            "# Disk DescriptorFile",
            "version=1",
            f"CID={self.cid:08x}",
            f"parentCID={self.parent_cid:08x}",
            f'createType="{self.create_type}"',
        ]
        if self.parent_hint is not None:
            lines.append(f'parentFileNameHint="{self.parent_hint}"')
        lines += ["", "# Extent description"]
        for access, count, kind, name, offset in self.extents:
            tail = f" {offset}" if kind == "FLAT" else ""
            lines.append(f'{access} {count} {kind} "{name}"{tail}')
        cylinders = max(1, min(sectors // (16 * 63), 16383))
        lines += [
            "",
            "# The Disk Data Base",
            "#DDB",
            "",
            'ddb.virtualHWVersion = "4"',
            f'ddb.geometry.cylinders = "{cylinders}"',
            'ddb.geometry.heads = "16"',
            'ddb.geometry.sectors = "63"',
            'ddb.adapterType = "ide"',
            "",
        ]
        return "\n".join(lines).encode()


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]*)"(?:\s+(\d+))?\s*$')


def parse_descriptor(text: bytes, path: Path) -> Descriptor:
    """Parse the descriptor the way qemu does (first ``CID=`` wins, key=value lines)."""
    try:
        s = text.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptFile(f"{path}: the descriptor is not text ({err})", path) from err
    values: dict[str, str] = {}
    extents = []
    for raw in s.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT.match(line)
        if m:
            extents.append((m[1], int(m[2]), m[3], m[4], int(m[5] or 0)))
            continue
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), value.strip().strip('"'))
    if "CID" not in values or "parentCID" not in values:
        raise CorruptFile(f"{path}: the descriptor has no CID/parentCID line", path)
    try:
        cid = int(values["CID"], 16)
        parent_cid = int(values["parentCID"], 16)
    except ValueError as err:
        raise CorruptFile(f"{path}: CID or parentCID is not hexadecimal", path) from err
    return Descriptor(
        cid, parent_cid, values.get("createType", ""), values.get("parentFileNameHint"), extents
    )


def descriptor_problems(text: bytes) -> list[str]:
    """What qemu's strstr-based parser would get wrong in this descriptor."""
    s = text.split(b"\0", 1)[0].decode("utf-8", "replace")
    problems = []
    first = s.find("CID")
    if first < 0 or not s[first:].startswith("CID=") or (first and s[first - 1] != "\n"):
        problems.append("the first 'CID' in the descriptor is not the CID= line")
    lines = s.splitlines()
    idx = [i for i, ln in enumerate(lines) if ln.startswith("CID=")]
    if idx and (idx[0] + 1 >= len(lines) or not lines[idx[0] + 1].startswith("parentCID=")):
        problems.append("parentCID= is not on the line right after CID=")
    return problems


# ---------------------------------------------------------------- the flat base


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
    def create(cls, folder: Path, size: int, preallocate: bool = True) -> None:
        flat = folder / FLAT_NAME
        try:
            fd = os.open(flat, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
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

    def problems(self) -> list[str]:
        """What is wrong with the base that open tolerated."""
        with open(self.path, "rb") as f:
            return descriptor_problems(f.read(MAX_DESCRIPTOR_FILE))

    def punch(self, offset: int, length: int) -> bool:
        """Deallocate an aligned range (reads as zeros); False if the filesystem can't."""
        return punch_hole(self.fd, offset, length)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_FALLOC_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def punch_hole(fd: int, offset: int, length: int) -> bool:
    fallocate = _libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return bool(fallocate(fd, _FALLOC_PUNCH, offset, length) == 0)


# ---------------------------------------------------------------- sparse deltas


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
        path = self.path
        file_size = os.fstat(self.fd).st_size
        raw = os.pread(self.fd, SECTOR, 0)
        if len(raw) < SECTOR:
            raise CorruptFile(f"{path}: truncated: {file_size} bytes, shorter than a header", path)
        (
            magic,
            version,
            flags,
            capacity,
            grain,
            desc_off,
            desc_size,
            ngtes,
            rgd,
            gd,
            overhead,
            _unclean,
            eol,
            compress,
        ) = HEADER.unpack(raw)
        if magic != MAGIC:
            raise ForeignFile(f"{path}: bad magic {magic!r}, not a KDMV sparse extent", path)
        if version not in (1, 2):
            raise ForeignFile(f"{path}: sparse version {version} is not supported (1 or 2)", path)
        if flags & (FLAG_COMPRESSED | FLAG_MARKERS) or compress:
            raise ForeignFile(f"{path}: compressed/streamOptimized extents are not supported", path)
        if grain != GRAIN_SECTORS or ngtes != GTES:
            raise ForeignFile(
                f"{path}: grainSize {grain} / {ngtes} GTEs per table; only "
                f"{GRAIN_SECTORS} / {GTES} (64 KiB grains) are supported",
                path,
            )
        if capacity * SECTOR != size:
            raise CorruptFile(
                f"{path}: capacity {capacity} sectors differs from the disk's {size // SECTOR}",
                path,
            )
        if desc_off != DESC_OFFSET or desc_size < DESC_SECTORS:
            raise CorruptFile(
                f"{path}: the descriptor must sit at sector 1 and own sectors "
                f"1-20 (offset {desc_off}, size {desc_size})",
                path,
            )
        num_gts = -(-capacity // (GTES * GRAIN_SECTORS))
        if overhead * SECTOR > file_size:
            raise CorruptFile(
                f"{path}: truncated: {file_size} bytes, the metadata alone "
                f"needs {overhead * SECTOR}",
                path,
            )
        self.version, self.flags, self.capacity = version, flags, capacity
        self.overhead = overhead
        self.zeroed = bool(flags & FLAG_ZEROED) and version >= 2
        self.num_grains = -(-capacity // GRAIN_SECTORS)
        self.gde = self._read_directory(gd, num_gts, overhead, "grain directory")
        self.rgde: list[int] = []
        if flags & FLAG_RGD and rgd:
            self.rgde = self._read_directory(rgd, num_gts, overhead, "redundant grain directory")
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
        """Write a new empty delta at ``path`` atomically (temp file, fsync, rename)."""
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
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                os.ftruncate(fd, lay.overhead * SECTOR)
                for data, sector in (
                    (header, 0),
                    (desc, DESC_OFFSET),
                    (rgd, lay.rgd),
                    (gd, lay.gd),
                ):
                    pwrite_all(fd, data, sector * SECTOR)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            fsync_dir(path.parent)
        except OSError as err:
            tmp.unlink(missing_ok=True)
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

    def set_entries(self, entries: dict[int, int]) -> None:
        """Set grain table entries directly (0 drops a grain), primary then redundant."""
        for g, s in entries.items():
            self.gt[g] = s
        self._write_tables({g // GTES for g in entries})

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

    def problems(self) -> list[str]:
        """Damage qemu-img check does not see: shared, misaligned or out-of-place grains,
        redundant tables that differ from the primary, descriptor text qemu would misparse."""
        out = descriptor_problems(self.read_descriptor_bytes())
        raw = os.pread(self.fd, SECTOR, 0)
        if self.flags & FLAG_NEWLINE and raw[73:77] != EOL_BYTES:
            out.append("the newline-detection bytes are damaged (file mangled as text?)")
        if self.read_descriptor().create_type != "monolithicSparse":
            out.append("createType is not monolithicSparse")
        if self.pending:
            out.append(
                f"{len(self.pending)} grains written before a crash are not in the "
                "grain tables yet (a read-write open commits them)"
            )
        busy = {g // GTES for g in self.pending}
        for t, sector in enumerate(self.gde):
            disk = self.read_table(sector)[: len(self.gt[t * GTES : (t + 1) * GTES])]
            if t not in busy and disk != self.gt[t * GTES : (t + 1) * GTES]:
                out.append(f"grain table {t} on disk differs from the one in memory")
            if self.rgde and self.read_table(self.rgde[t]) != self.read_table(sector):
                out.append(
                    f"redundant grain table {t} differs from the primary (damaged, "
                    "or a crash cut a table update short)"
                )
        if self.rgde and self.rgde == self.gde:
            out.append("the redundant grain directory is the primary one")
        used = sorted((s, g) for g, s in enumerate(self.gt) if s > 1)
        misaligned = [(s, g) for s, g in used if s % GRAIN_SECTORS]
        if misaligned:
            s, g = misaligned[0]
            out.append(
                f"grain {g} (disk offset {g * GRAIN}) points to sector {s}, not a "
                f"multiple of {GRAIN_SECTORS}: not grain-aligned" + _more(len(misaligned))
            )
        shared = [
            (a, b) for a, b in zip(used, used[1:], strict=False) if a[0] + GRAIN_SECTORS > b[0]
        ]
        if shared:
            (sa, ga), (sb, gb) = shared[0]
            out.append(
                f"grains {ga} and {gb} (disk offsets {ga * GRAIN} and {gb * GRAIN}) "
                f"overlap in the file (sectors {sa} and {sb}): writing one changes "
                "the other" + _more(len(shared))
            )
        if 1 in self.gt and not self.zeroed:
            out.append(
                "a grain table entry is 1 but the file has no zeroed-grain flag "
                "(qemu reads the descriptor as data)"
            )
        return out

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


def _more(count: int) -> str:
    return f" ({count - 1} more like it)" if count > 1 else ""


Layer = FlatBase | SparseExtent
