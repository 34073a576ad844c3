"""Driving ``quiesce-host`` in-process, and the backupScripts.d entries the scenarios use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from host.cli import main as cli_main
from host.engine.disk import Disk
from tests.helpers.disks import run


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``quiesce-host ARGS`` in this process: (exit code, stdout, stderr)."""
    code = cli_main.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_cli(argv: list[str]) -> int:
    """``quiesce-host ARGV`` in this process: its exit code, as a shell would see it."""
    return cli_main.main(argv)


def write_script(folder: Path, name: str, body: str) -> Path:
    """One backupScripts.d entry: ``#!/bin/sh``, ``body``, ``exit 0``, mode 0755 (and the
    folder 0755 if it is new: the agent refuses scripts others may write)."""
    folder.mkdir(mode=0o755, exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/sh\n{body}exit 0\n")
    script.chmod(0o755)
    return script


def make_scripts(
    folder: Path, trace: Path, names: list[str], fail: str = "", sleep: str = "", seconds: float = 0
) -> None:
    """backupScripts.d entries that log ``NAME ARG`` to ``trace``; one may fail or sleep."""
    for name in names:
        body = f'echo "{name} $1" >> {trace}\n'
        if name == fail:
            body += '[ "$1" = freeze ] && { echo "cannot lock" >&2; exit 2; }\n'
        if name == sleep:
            body += f'[ "$1" = freeze ] && sleep {seconds}\n'
        write_script(folder, name, body)


def snapshots(folder: Path) -> list[dict[str, Any]]:
    with Disk.open(folder, readonly=True) as disk:
        return disk.snapshot_list()


def holds_the_image(capsys: pytest.CaptureFixture[str], disk: Path, image: Path, out: Path) -> None:
    """What a user checks of a disk made from a filesystem image: qemu-img reads the disk as
    the image, byte for byte (a larger disk reads zeros past it), and ``disk export`` to
    ``out`` gives a filesystem e2fsck passes."""
    run("qemu-img", "compare", "-f", "vmdk", "-F", "raw", disk / "disk.vmdk", image)
    assert cli(capsys, "disk", "export", disk, out)[0] == 0
    run("e2fsck", "-fn", out)
