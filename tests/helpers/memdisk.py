"""A test double of the engine's Disk for the servers: a bytearray, snapshots as copies.

It implements ``host.serve.device.ServedDisk`` (mypy checks it, see the end of this module)
and fails the way the engine fails: ``SnapshotExists``, ``SnapshotNotFound``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.engine.errors import SnapshotExists, SnapshotNotFound
from host.serve.device import Progress

if TYPE_CHECKING:
    from host.serve.device import ServedDisk

CURRENT = "(current)"  # the writable state, as live_chain() names it


class MemDisk:
    """A disk in memory: a bytearray, and each snapshot a frozen copy of it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray(size)
        self.lock = threading.Lock()
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.current_parent: str | None = None
        self.flushes = 0

    def read(self, offset: int, length: int) -> bytes:
        with self.lock:
            return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        assert offset + len(data) <= self.size
        with self.lock:
            self.data[offset : offset + len(data)] = data

    def write_zeroes(self, offset: int, length: int) -> None:
        self.write(offset, bytes(length))

    def flush(self) -> None:
        self.flushes += 1

    def info(self) -> dict[str, Any]:
        return {"size": self.size, "snapshots": len(self.snapshots)}

    def _get(self, name: str) -> dict[str, Any]:
        if name not in self.snapshots:
            raise SnapshotNotFound(f"memory disk: no snapshot named {name!r}")
        return self.snapshots[name]

    def snapshot_create(
        self,
        name: str,
        description: str = "",
        consistency: str = "crash",
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if name in self.snapshots:
            raise SnapshotExists(f"memory disk: a snapshot named {name!r} exists already")
        self.flush()
        with self.lock:
            snap = {
                "name": name,
                "parent": self.current_parent,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "description": description,
                "consistency": consistency,
                "report": report or {},
                "artifacts": artifacts or {},
                "data": bytes(self.data),
            }
        self.snapshots[name] = snap
        self.current_parent = name
        return self._record(snap)

    def snapshot_update(
        self,
        name: str,
        *,
        description: str | None = None,
        consistency: str | None = None,
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        snap = self._get(name)
        fields = {
            "description": description,
            "consistency": consistency,
            "report": report,
            "artifacts": artifacts,
        }
        snap.update({k: v for k, v in fields.items() if v is not None})
        return self._record(snap)

    def snapshot_list(self) -> list[dict[str, Any]]:
        return [
            {**self._record(s), "is_current_position": n == self.current_parent}
            for n, s in self.snapshots.items()
        ]

    def live_chain(self) -> set[str]:
        """The snapshots the current state reads through."""
        chain, name = {CURRENT}, self.current_parent
        while name is not None:
            chain.add(name)
            name = self.snapshots[name]["parent"]
        return chain

    def delete_cost(self, name: str) -> int:
        """As the engine's: what a delete would merge. A memory disk keeps whole copies, so
        dropping one off the live chain moves nothing; one on it counts as a huge merge."""
        self._get(name)
        return 1 << 40 if name in self.live_chain() else 0

    def snapshot_delete(self, name: str, progress: Progress | None = None) -> None:
        snap = self._get(name)
        del self.snapshots[name]
        for other in self.snapshots.values():
            if other["parent"] == name:
                other["parent"] = snap["parent"]

    def export_raw(
        self,
        out: str | Path,
        snapshot: str | None = None,
        progress: Progress | None = None,
        *,
        sync: bool = True,
    ) -> None:
        data = self._get(snapshot)["data"] if snapshot else self.read(0, self.size)
        Path(out).write_bytes(data)
        if progress is not None:
            progress(self.size, self.size)

    @staticmethod
    def _record(snap: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in snap.items() if k != "data"}


if TYPE_CHECKING:  # mypy holds the double to the interface the control server uses
    _served: ServedDisk = MemDisk(0)
