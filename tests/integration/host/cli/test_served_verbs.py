"""The verbs on a disk that a server holds: the answer comes from the server, or a refusal that
says why; a disk locked by something else is busy, whichever verb meets it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.serve.control import ControlServer, IOGate
from tests.helpers.hostcli import cli


@pytest.fixture
def served(short_tmp: Path) -> Iterator[tuple[Path, Disk]]:
    """A disk held by a control server in this process, as ``quiesce-host serve`` holds it."""
    folder = short_tmp / "vm"
    Disk.create(folder, 4 << 20).close()
    disk = Disk.open(folder)
    server = ControlServer(folder, disk, IOGate())
    server.start()
    yield folder, disk
    server.shutdown()
    disk.close()


def test_create_list_info_and_delete_go_through_the_server(
    served: tuple[Path, Disk], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, disk = served
    code, out, _ = cli(capsys, "snapshot", "create", folder, "live", "-d", "served", "--json")
    assert code == 0 and json.loads(out)["name"] == "live"
    assert [s["name"] for s in disk.snapshot_list()] == ["live"]
    code, out, _ = cli(capsys, "snapshot", "list", folder)
    assert code == 0 and out.startswith("live ") and "<- you are here" in out
    code, out, _ = cli(capsys, "disk", "info", folder, "--json")
    assert code == 0 and json.loads(out)["chain"] == disk.info()["chain"]
    code, out, _ = cli(capsys, "disk", "info", folder)
    assert code == 0 and "*disk-000001.vmdk" in out
    assert cli(capsys, "snapshot", "delete", folder, "live")[:2] == (
        0,
        "snapshot 'live' deleted\n",
    )
    assert disk.snapshot_list() == []


def test_what_a_server_cannot_do_is_refused_with_the_reason(
    served: tuple[Path, Disk], capsys: pytest.CaptureFixture[str], short_tmp: Path
) -> None:
    folder, disk = served
    disk.snapshot_create("s")
    code, _, err = cli(capsys, "snapshot", "revert", folder, "s")
    assert code == 2 and "the server refused snapshot-revert" in err
    code, _, err = cli(capsys, "snapshot", "delete", folder, "--all")
    assert code == 17 and "in use by another process" in err
    assert "'delete --all' merges every delta into the base" in err
    code, _, err = cli(capsys, "disk", "export", folder, short_tmp / "live.raw")
    assert code == 17 and "take a snapshot and export it with --snapshot NAME" in err
    assert [s["name"] for s in disk.snapshot_list()] == ["s"]


def test_a_disk_held_by_something_else_is_busy_for_every_verb(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = short_tmp / "vm"
    Disk.create(folder, 1 << 20).close()
    with Disk.open(folder):
        for verb in (
            ["disk", "info", folder],
            ["snapshot", "list", folder],
            ["snapshot", "create", folder, "x"],
            ["snapshot", "delete", folder, "x"],
            ["disk", "export", folder, short_tmp / "out.raw", "--snapshot", "x"],
        ):
            code, _, err = cli(capsys, *verb)
            assert code == 17 and "in use by another process" in err, verb
            assert "server refused" not in err
