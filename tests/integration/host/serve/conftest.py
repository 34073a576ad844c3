"""Fixtures for the live-serving tests: an in-memory disk double and servers on free ports."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from host.serve.device import GatedDevice, IOGate
from host.serve.nbd import NBDServer
from tests.helpers.env import need
from tests.helpers.served import Served


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
