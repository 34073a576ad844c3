"""Fixtures for the live-serving tests: an in-memory disk double and servers on free ports."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from host.nbd import NBDServer
from host.serve_control import GatedDevice, IOGate
from tests.conftest import need


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

    def snapshot_delete(self, name: str, progress: Any = None) -> dict[str, Any]:
        snap = self.snapshots.pop(name)
        for other in self.snapshots.values():
            if other["parent"] == name:
                other["parent"] = snap["parent"]
        return {"deleted": name}


@pytest.fixture
def need_qemu() -> None:
    for tool in ("qemu-io", "qemu-img"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (qemu-utils)")


@pytest.fixture
def need_nbdinfo() -> None:
    need(shutil.which("nbdinfo") is not None, "nbdinfo is not installed (libnbd-bin)")


@pytest.fixture
def serve() -> Iterator[Callable[..., NBDServer]]:
    """Factory: ``serve(device, **kw)`` → a started NBDServer on 127.0.0.1, a free port."""
    servers: list[NBDServer] = []

    def factory(device: Any, gate: IOGate | None = None, **kw: Any) -> NBDServer:
        gated = GatedDevice(device, gate or IOGate())
        server = NBDServer(gated, "127.0.0.1", 0, **kw)
        server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.shutdown()
