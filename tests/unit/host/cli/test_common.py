"""What every verb stands on: sizes, and the choice between the engine and the disk's server."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from host.cli._common import Server, open_or_ask, parse_size
from host.cli.main import build_parser
from host.engine.disk import Disk
from host.engine.errors import DiskBusy


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("64K", 65536), ("64M", 64 << 20), ("1.5G", 3 << 29), ("64MiB", 64 << 20)],
)
def test_sizes_take_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_size_without_a_number_says_what_is_expected() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="e.g. 64M, 1G"):
        parse_size("lots")


def test_a_free_disk_is_opened_here_and_closed_after(tmp_path: Path) -> None:
    Disk.create(tmp_path / "vm", 1 << 20).close()
    size = open_or_ask(str(tmp_path / "vm"), lambda d: d.size, lambda s: pytest.fail("asked"))
    assert size == 1 << 20
    Disk.open(tmp_path / "vm").close()  # the lock was let go


def test_a_locked_disk_without_a_server_stays_busy(tmp_path: Path) -> None:
    folder = tmp_path / "vm"
    Disk.create(folder, 1 << 20).close()
    with Disk.open(folder):
        with pytest.raises(DiskBusy, match="in use by another process"):
            open_or_ask(str(folder), lambda d: d.size, lambda s: s.ask("info"))
        with pytest.raises(DiskBusy, match=r"another process .*; not under a server") as info:
            open_or_ask(str(folder), lambda d: d.size, lambda s: s.refuse("not under a server"))
    assert isinstance(info.value.__cause__, DiskBusy)


def test_the_server_is_handed_the_busy_error(tmp_path: Path) -> None:
    folder = tmp_path / "vm"
    Disk.create(folder, 1 << 20).close()
    seen: list[Server] = []
    with Disk.open(folder):
        open_or_ask(str(folder), lambda d: None, seen.append, readonly=True)
    assert seen[0].disk == str(folder) and isinstance(seen[0].busy, DiskBusy)


def test_create_declares_its_quiesce_options_itself() -> None:
    args = build_parser().parse_args(
        [
            "snapshot",
            "create",
            "vm",
            "n",
            "--quiesce",
            "unix:/run/a.sock",
            "--quiesce-mode",
            "preferred",
        ]
    )
    assert (args.quiesce, args.quiesce_mode, args.consistency) == (
        "unix:/run/a.sock",
        "preferred",
        "crash",
    )
    plain = build_parser().parse_args(["snapshot", "create", "vm", "n"])
    assert plain.func is args.func and plain.quiesce is None


def test_quiesce_mode_needs_quiesce(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["snapshot", "create", "vm", "n", "--quiesce-mode", "preferred"]
    )
    assert args.func(args) == 2
    assert "--quiesce-mode needs --quiesce ENDPOINT" in capsys.readouterr().err
