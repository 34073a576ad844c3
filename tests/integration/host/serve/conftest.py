"""Fixtures for the live-serving tests: an in-memory disk double and servers on free ports."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from host.serve.control import GatedDevice, IOGate
from host.serve.nbd import NBDServer
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


ROOT = Path(__file__).resolve().parents[4]


class Served:
    """A running ``python -m host.cli.serve``; stopped (and unmounted) on cleanup."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.errfile = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host.cli.serve", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.errfile,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    @property
    def stderr(self) -> str:
        self.errfile.seek(0)
        return self.errfile.read()

    def wait_for(self, prefix: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} line; got {self.lines}, stderr: {self.stderr}")

    @property
    def uri(self) -> str:
        return self.wait_for("serving ").rsplit(" ", 1)[1]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self.reader.join(5)
        return code


@pytest.fixture
def served(short_tmp):
    made: list[Served] = []
    mounts: list[Path] = []

    def factory(*args: str) -> Served:
        s = Served(*args)
        made.append(s)
        if "--fuse" in args:
            mounts.append(Path(args[args.index("--fuse") + 1]))
        return s

    yield factory
    for s in made:
        s.stop(signal.SIGKILL)
        s.errfile.close()
    for mnt in mounts:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
