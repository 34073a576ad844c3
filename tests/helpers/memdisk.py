"""A test double of the engine's Disk for the servers: a bytearray, snapshots as copies."""

from __future__ import annotations

import threading
from typing import Any


class MemDisk:
    """A test double of the engine's Disk: a bytearray, and snapshots as frozen copies."""

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

    def snapshot_create(
        self,
        name: str,
        description: str = "",
        consistency: str = "crash",
        report: Any = None,
        artifacts: Any = None,
    ) -> dict[str, Any]:
        if name in self.snapshots:
            raise ValueError(f"snapshot {name!r} exists")
        self.flush()
        with self.lock:
            snap = {
                "name": name,
                "parent": self.current_parent,
                "description": description,
                "consistency": consistency,
                "report": report,
                "artifacts": artifacts,
                "data": bytes(self.data),
            }
        self.snapshots[name] = snap
        self.current_parent = name
        return {k: v for k, v in snap.items() if k != "data"}

    def snapshot_list(self) -> list[dict[str, Any]]:
        out = [
            {"name": n, "parent": s["parent"], "current": False} for n, s in self.snapshots.items()
        ]
        out.append({"name": "(current)", "parent": self.current_parent, "current": True})
        return out

    def live_chain(self) -> set[str]:
        """The snapshots the current state reads through."""
        chain, name = {"(current)"}, self.current_parent
        while name is not None:
            chain.add(name)
            name = self.snapshots[name]["parent"]
        return chain

    def delete_cost(self, name: str) -> int:
        """As the engine's: what a delete would merge. A memory disk keeps whole copies, so
        dropping one off the live chain moves nothing; one on it counts as a huge merge."""
        if name not in self.snapshots:
            raise KeyError(name)
        return 1 << 40 if name in self.live_chain() else 0

    def snapshot_delete(self, name: str, progress: Any = None) -> dict[str, Any]:
        snap = self.snapshots.pop(name)
        for other in self.snapshots.values():
            if other["parent"] == name:
                other["parent"] = snap["parent"]
        return {"deleted": name}
