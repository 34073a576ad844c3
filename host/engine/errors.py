"""The delta-disk engine's errors: one tree under ``common.errors.QuiesceError``.

Every message names the file and what is wrong; ``space_error`` turns an ``OSError`` from a
write into the one a sysadmin can act on (``NoSpace`` for a full disk)::

    DiskError                    2  root of the engine's (a QuiesceError)
     ├── ForeignFile            10  not a file this engine can use (bad magic, unsupported format)
     ├── CorruptFile            11  our format, damaged (truncated, table past the end, ...)
     │    └── VmMismatch        11  a VM's disks disagree with its tree (vm.json)
     ├── ChainBroken            12  missing parent, parent loop, hint outside the folder
     │    ├── ChainFileMissing  12  a layer file the chain names is missing or unreadable
     │    └── CidMismatch       13  child's parentCID is not the parent's CID
     ├── ChainTooDeep           14  a 33rd snapshot in one chain
     ├── SnapshotNotFound       15
     ├── SnapshotExists         16
     ├── DiskBusy               17  another process holds the disk's lock
     ├── ReadOnly               18  a write on a disk opened read-only
     └── NoSpace                19  ENOSPC/EDQUOT; the operation was undone or can be finished
"""

from __future__ import annotations

import errno
from pathlib import Path

from common.errors import QuiesceError


class DiskError(QuiesceError):
    """Root of the host engine's errors."""

    code = "DiskError"
    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class ForeignFile(DiskError):
    code = "ForeignFile"
    exit_code = 10


class CorruptFile(DiskError):
    code = "CorruptFile"
    exit_code = 11


class VmMismatch(CorruptFile):
    """A VM's disk folders disagree with the VM's tree: a disk missing, of another history,
    a snapshot or layer the tree names that the disk does not have."""

    code = "VmMismatch"


class ChainBroken(DiskError):
    code = "ChainBroken"
    exit_code = 12


class ChainFileMissing(ChainBroken):
    """A layer file named by the chain is missing or unreadable."""

    code = "ChainFileMissing"


class CidMismatch(ChainBroken):
    code = "CidMismatch"
    exit_code = 13


class ChainTooDeep(DiskError):
    code = "ChainTooDeep"
    exit_code = 14


class SnapshotNotFound(DiskError):
    code = "SnapshotNotFound"
    exit_code = 15


class SnapshotExists(DiskError):
    code = "SnapshotExists"
    exit_code = 16


class DiskBusy(DiskError):
    code = "DiskBusy"
    exit_code = 17


class ReadOnly(DiskError):
    code = "ReadOnly"
    exit_code = 18


class NoSpace(DiskError):
    code = "NoSpace"
    exit_code = 19


SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def space_error(err: OSError, path: str | Path, doing: str) -> DiskError:
    """Turn an OSError into the DiskError a sysadmin can act on (NoSpace for a full disk)."""
    if err.errno in SPACE_ERRNOS:
        return NoSpace(f"{path}: no space left while {doing}; free space and retry", path)
    return DiskError(f"{path}: {doing} failed: {err.strerror or err}", path)
