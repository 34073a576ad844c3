"""The block-device layer the servers share: the device, the I/O gate, and errno for failures.

``BlockDevice`` is what NBD and FUSE need of a disk (the engine's ``Disk`` and ``RawFile`` both
fit); ``SnapshotSide`` is what the control socket needs (snapshots, records, export), which the
engine's ``Disk`` has (a ``ServedDisk``) and a ``VM`` has over all its disks. Every client
request passes an ``IOGate`` (``GatedDevice``): a snapshot waits until the requests in flight
are done, holds new ones back, flushes and switches, then lets them go, so a write is never
split across the cut. A VM's disks each have their gate, and a ``GateGroup`` pauses them all
for one cut.

One errno table for NBD and FUSE: an engine error, or the OSError below it, is an errno;
FUSE hands it to the kernel as it is, NBD narrows it to the few its wire defines.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from host.engine.errors import NoSpace, ReadOnly

PAUSE_TIMEOUT = 30.0  # seconds to wait for in-flight client I/O before a snapshot gives up

ENGINE_ERRNO: tuple[tuple[type[Exception], int], ...] = (
    (NoSpace, errno.ENOSPC),
    (ReadOnly, errno.EROFS),
)


def errno_of(err: BaseException) -> int:
    """The errno for a failed device call: the engine's kind, the OSError's own, else EIO."""
    for kind, code in ENGINE_ERRNO:
        if isinstance(err, kind):
            return code
    if isinstance(err, OSError) and err.errno:
        return err.errno
    if isinstance(err, MemoryError):
        return errno.ENOMEM
    return errno.EIO


Progress = Callable[[int, int], Any]  # (bytes done, bytes total)


@runtime_checkable
class BlockDevice(Protocol):
    """What the servers need of a disk: the engine's ``Disk`` and ``RawFile`` both fit."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...


@runtime_checkable
class SnapshotSide(Protocol):
    """What the control socket needs of what it serves beyond blocks: the engine's ``Disk``,
    or a ``VM`` (whose disks are served one export each). Raises the engine's errors
    (SnapshotExists, SnapshotNotFound, NoSpace, ...), which go back with their own class."""

    @property
    def size(self) -> int: ...

    def flush(self) -> None: ...

    def info(self) -> dict[str, Any]: ...

    def snapshot_create(
        self,
        name: str,
        description: str = "",
        consistency: str = "crash",
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def snapshot_update(
        self,
        name: str,
        *,
        description: str | None = None,
        consistency: str | None = None,
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def snapshot_list(self) -> list[dict[str, Any]]: ...

    def delete_cost(self, name: str) -> int: ...

    def snapshot_delete(self, name: str, progress: Progress | None = None) -> None: ...

    def export_raw(
        self,
        out: str | Path,
        snapshot: str | None = None,
        progress: Progress | None = None,
        *,
        sync: bool = True,
    ) -> None: ...


@runtime_checkable
class OfDisks(Protocol):
    """A snapshot side of several disks (a ``VM``) that reads and exports one by name."""

    def disk_info(self, disk: str) -> dict[str, Any]: ...

    def export_disk_raw(
        self,
        disk: str,
        out: str | Path,
        snapshot: str | None = None,
        progress: Progress | None = None,
        *,
        sync: bool = True,
    ) -> None: ...


@runtime_checkable
class CutsUnderPause(Protocol):
    """A snapshot side that pauses its clients itself, around just its switch (a ``VM``:
    its intent and records are written outside the pause)."""

    def snapshot_create_paused(
        self,
        name: str,
        description: str = "",
        consistency: str = "crash",
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        *,
        pause: Callable[[], AbstractContextManager[object]],
    ) -> dict[str, Any]: ...


@runtime_checkable
class ServedDisk(BlockDevice, SnapshotSide, Protocol):
    """A served disk with a snapshot side: the engine's ``Disk`` (a raw image file has none)."""


class RawFile:
    """A plain file as a BlockDevice: for tests and for serving a raw image directly."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.size = os.fstat(self.fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data))

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def write_zeroes(self, offset: int, length: int) -> None:
        chunk = bytes(min(length, 1 << 20))
        while length > 0:
            n = min(length, len(chunk))
            self.write(offset, chunk[:n])
            offset, length = offset + n, length - n

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class IOGate:
    """Shared for client I/O, exclusive for a pause; a waiting pause holds new I/O back."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._paused = False
        self.pauses = 0

    @contextmanager
    def io(self) -> Iterator[None]:
        with self._cond:
            while self._paused:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    @contextmanager
    def paused(self, timeout: float = PAUSE_TIMEOUT) -> Iterator[float]:
        """No client I/O runs inside; yields the (monotonic) time the pause took hold.
        Raises TimeoutError if in-flight I/O does not drain."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._paused:
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("another pause is still running")
            self._paused = True
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self._active:
                        self._paused = False
                        self._cond.notify_all()
                        raise TimeoutError(f"client I/O still running after {timeout:.1f} s")
            self.pauses += 1
            held = time.monotonic()
        try:
            yield held
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    @property
    def is_paused(self) -> bool:
        return self._paused


class GateGroup:
    """The gates of a VM's disks used as one: a pause holds new I/O back on every disk and
    drains what is in flight on each, so that no write lands on one disk after the cut and on
    another before it (QEMU's ``transaction`` does the same over its block jobs)."""

    def __init__(self, gates: dict[str, IOGate]) -> None:
        self.gates = gates

    @contextmanager
    def io(self) -> Iterator[None]:
        """Client I/O on every disk at once (a flush of the whole VM)."""
        with ExitStack() as stack:
            for gate in self.gates.values():
                stack.enter_context(gate.io())
            yield

    @contextmanager
    def paused(self, timeout: float = PAUSE_TIMEOUT) -> Iterator[dict[str, float]]:
        """Every disk paused, one after the other within one deadline, then all released
        together; yields when each disk's pause took hold. Raises TimeoutError (naming the
        disk) if one does not drain: the disks already paused are let go again."""
        deadline = time.monotonic() + timeout
        held: dict[str, float] = {}
        with ExitStack() as stack:
            for name, gate in self.gates.items():
                try:
                    held[name] = stack.enter_context(
                        gate.paused(max(0.0, deadline - time.monotonic()))
                    )
                except TimeoutError as err:
                    raise TimeoutError(f"disk {name!r}: {err}") from err
            yield held

    @property
    def is_paused(self) -> bool:
        return any(g.is_paused for g in self.gates.values())

    @property
    def pauses(self) -> int:
        return min((g.pauses for g in self.gates.values()), default=0)


Gate = IOGate | GateGroup


class GatedDevice:
    """A BlockDevice whose every call passes the gate; writers are serialised."""

    def __init__(self, device: BlockDevice, gate: IOGate) -> None:
        self.device = device
        self.gate = gate
        self._wlock = threading.Lock()
        self.stats = {"reads": 0, "writes": 0, "flushes": 0, "bytes_read": 0, "bytes_written": 0}

    @property
    def size(self) -> int:
        return self.device.size

    def read(self, offset: int, length: int) -> bytes:
        with self.gate.io():
            data = self.device.read(offset, length)
        self.stats["reads"] += 1
        self.stats["bytes_read"] += length
        return data

    def write(self, offset: int, data: bytes) -> None:
        with self.gate.io(), self._wlock:
            self.device.write(offset, data)
        self.stats["writes"] += 1
        self.stats["bytes_written"] += len(data)

    def write_zeroes(self, offset: int, length: int) -> None:
        with self.gate.io(), self._wlock:
            self.device.write_zeroes(offset, length)
        self.stats["writes"] += 1

    def flush(self) -> None:
        with self.gate.io(), self._wlock:
            self.device.flush()
        self.stats["flushes"] += 1


if TYPE_CHECKING:  # the engine's Disk is the ServedDisk; mypy holds it to the interface here
    from host.engine.disk import Disk
    from host.engine.vm import VM

    _engine_disk: type[ServedDisk] = Disk
    _engine_vm: type[SnapshotSide] = VM
    _vm_cut: type[CutsUnderPause] = VM
