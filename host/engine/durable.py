"""Durable files for the delta-disk engine.

Everything the engine writes that must survive a crash goes through here: ``atomic_write``
(``common.files``: temp file in the same folder, write, fsync, rename, fsync the folder,
borg's ``SaveFile``; here an OSError becomes the engine's DiskError or NoSpace),
the one-writer ``FolderLock`` (an ``fcntl.flock`` on ``DISK/.lock``), the pending log, and
the sweeps that remove what a crash left of them (temp files, logs of layers gone).

``PendingLog`` lets a write that allocates a grain be acknowledged without an fsync while
keeping both promises: the grain table in the file only ever points at data already synced
(entries reach it at the next flush, after an ``fdatasync``), and an acknowledged write
survives the death of the process (its entry is in the log, which the next open of the same
boot replays; after a reboot the log is ignored: those writes were never flushed).

Raises DiskError and NoSpace (``host.engine.errors``), DiskBusy from ``FolderLock``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import struct
from collections.abc import Collection
from pathlib import Path
from typing import Any

from common import files
from host.engine.errors import CorruptFile, DiskBusy, DiskError, space_error


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite every byte (a short write is retried, so a full disk raises ENOSPC)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole
    (``common.files.atomic_write``: temp file ``.NAME.tmp-PID``, fsync, rename, folder fsync).

    Raises NoSpace (the old file untouched, the temp file removed) or DiskError.
    """
    try:
        files.atomic_write(path, data)
    except OSError as err:
        raise space_error(err, path, "writing") from err


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str = "") -> Any:
    """What ``write_json`` wrote to ``path``. Text that is not JSON is a CorruptFile
    ("``what`` is not valid JSON"); a missing file raises FileNotFoundError, as does reading."""
    raw = path.read_bytes()
    try:
        return json.loads(raw)
    except ValueError as err:
        subject = f"{what} is " if what else ""
        raise CorruptFile(f"{path}: {subject}not valid JSON ({err})", path) from err


def unlink_durably(*paths: Path) -> None:
    """Remove files (missing ones are fine) and make the removals durable."""
    folders = set()
    for p in paths:
        try:
            p.unlink()
            folders.add(p.parent)
        except FileNotFoundError:
            pass
    for folder in folders:
        files.fsync_dir(folder)


class FolderLock:
    """One writer per disk: an exclusive flock on ``DISK/.lock`` (shared for read-only)."""

    def __init__(self, folder: Path, shared: bool) -> None:
        self.path = folder / ".lock"
        try:
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            if shared and err.errno in (errno.EROFS, errno.EACCES):
                self.fd = None  # a read-only medium: nobody can write either
                return
            raise DiskError(
                f"{self.path}: cannot open the lock file: {err.strerror}", self.path
            ) from err
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self.fd)
            self.fd = None
            mode = "read" if shared else "write"
            raise DiskBusy(
                f"{folder}: the disk is in use by another process (cannot lock it "
                f"for {mode}); stop the server or command using it",
                folder,
            ) from err

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> bytes:
    """This boot's id (36 bytes): the page cache, and so an unsynced file, lives as long."""
    try:
        with open(BOOT_ID, "rb") as f:
            return f.read().strip()[:36].ljust(36, b"?")
    except OSError:
        return b"?" * 36  # unknown: a log is then trusted only by its own process


class PendingLog:
    """Grain table entries not yet in the table, kept where a killed process leaves them.

    A 64-byte header (magic, boot id) and then ``<u32 grain, u32 sector>`` records.
    """

    MAGIC = b"QPEND1\n"
    HEADER = 64
    RECORD = struct.Struct("<II")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.end = self.HEADER

    def load(self) -> tuple[list[tuple[int, int]], bool]:
        """(records written in this boot, whether a log from an earlier boot was found)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return [], False
        if raw[: len(self.MAGIC)] != self.MAGIC or len(raw) < self.HEADER:
            return [], True
        if raw[len(self.MAGIC) : len(self.MAGIC) + 36] != boot_id():
            return [], True
        body = raw[self.HEADER :]
        body = body[: len(body) - len(body) % self.RECORD.size]
        return [tuple(r) for r in self.RECORD.iter_unpack(body)], False

    def append(self, records: list[tuple[int, int]]) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            pwrite_all(self.fd, (self.MAGIC + boot_id()).ljust(self.HEADER, b"\0"), 0)
            self.end = self.HEADER
        data = b"".join(self.RECORD.pack(g, s) for g, s in records)
        pwrite_all(self.fd, data, self.end)
        self.end += len(data)

    def reset(self) -> None:
        """Every entry is in the table now (and synced)."""
        if self.fd is not None and self.end > self.HEADER:
            os.ftruncate(self.fd, self.HEADER)
            self.end = self.HEADER

    def close(self, remove: bool) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if remove:
            self.path.unlink(missing_ok=True)


def pending_log_path(layer: Path) -> Path:
    return layer.with_name(f".{layer.name}.pending")


def sweep_pending_logs(folder: Path, layers: Collection[str]) -> None:
    """Remove the pending logs of layers no longer in the tree (the caller holds the lock)."""
    orphans = [
        p
        for p in folder.iterdir()
        if p.name.endswith(".pending") and p.name[1 : -len(".pending")] not in layers
    ]
    if orphans:
        unlink_durably(*orphans)


# the temp file (common.files.temp_name) of each file a disk replaces whole
TEMP_FILE = re.compile(r"^\.(tree\.json|intent\.json|disk(-\d{6})?\.vmdk)\.tmp-\d+$")


def sweep_temp_files(folder: Path) -> None:
    """Remove the temp files of atomic writes a crash cut short (the caller holds the lock)."""
    stale = [p for p in folder.iterdir() if TEMP_FILE.match(p.name)]
    if stale:
        unlink_durably(*stale)
