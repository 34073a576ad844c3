"""e2e fixtures: a real daemon over its socket, on loop-mounted filesystems the test made."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hooks.fsfreeze import freeze_path, thaw_path
from tests.conftest import need_root
from tests.helpers.agentproc import AgentProcess


@pytest.fixture
def start_agent(short_tmp: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Factory: ``start_agent({...config...})`` starts a daemon; all are stopped afterwards."""
    started: list[AgentProcess] = []

    def factory(config: dict[str, Any], name: str = "a") -> AgentProcess:
        workdir = short_tmp / name
        workdir.mkdir(exist_ok=True)
        agent = AgentProcess(workdir, config)
        started.append(agent)
        return agent.start()

    yield factory
    for agent in started:
        agent.stop()


def frozen_now(path: str) -> bool:
    """Is this (test-made) filesystem frozen? A second FIFREEZE says EBUSY if so."""
    try:
        freeze_path(path)
    except OSError as err:
        if err.errno == errno.EBUSY:
            return True
        raise
    thaw_path(path)
    return False


class Writer:
    """A process that writes and fsyncs a file on a mount, as an application would."""

    def __init__(self, mount: str, name: str = "probe") -> None:
        code = (
            "import os,sys; f=open(sys.argv[1],'w'); f.write('x'*4096); f.flush(); "
            "os.fsync(f.fileno()); f.close()"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code, os.path.join(mount, name)])
        self.started = time.monotonic()

    def done_within(self, seconds: float) -> bool:
        try:
            self.proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False


@pytest.fixture(autouse=True)
def _root_only() -> None:
    need_root()
