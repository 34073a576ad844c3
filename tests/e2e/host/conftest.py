"""Fixtures for the host-side quiesce tests: a real agent, a real engine disk, a CLI runner.

The agent fixtures come from tests/e2e (a daemon over its socket, on loop-mounted
filesystems this test made). Tests that need root say so with ``need_root()``; the client's
own tests run anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from host.cli import main as cli
from host.engine.disk import Disk
from tests.e2e.agent.conftest import start_agent  # noqa: F401 - a fixture, used by the tests

__all__ = ["run_cli", "make_scripts"]


def run_cli(argv: list[str]) -> int:
    """``quiesce-host ARGV`` in this process: its exit code, as a shell would see it."""
    return cli.main(argv)


def make_scripts(
    folder: Path, trace: Path, names: list[str], fail: str = "", sleep: str = "", seconds: float = 0
) -> None:
    """backupScripts.d entries that log ``NAME ARG`` to ``trace``; one may fail or sleep."""
    folder.mkdir(mode=0o755, exist_ok=True)
    for name in names:
        body = f'echo "{name} $1" >> {trace}\n'
        if name == fail:
            body += '[ "$1" = freeze ] && { echo "cannot lock" >&2; exit 2; }\n'
        if name == sleep:
            body += f'[ "$1" = freeze ] && sleep {seconds}\n'
        p = folder / name
        p.write_text(f"#!/bin/sh\n{body}exit 0\n")
        p.chmod(0o755)


@pytest.fixture
def disk_dir(short_tmp: Path) -> Iterator[Path]:
    """A fresh 64 MiB engine disk folder (closed; tests open it)."""
    folder = short_tmp / "disk"
    Disk.create(folder, 64 << 20).close()
    yield folder


@pytest.fixture
def deltas() -> Callable[[Path], list[str]]:
    def listing(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.name.startswith("disk-0"))

    return listing


def snapshots(folder: Path) -> list[dict[str, Any]]:
    with Disk.open(folder, readonly=True) as disk:
        return disk.snapshot_list()
