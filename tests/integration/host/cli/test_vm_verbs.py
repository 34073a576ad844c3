"""``quiesce-host vm ...`` and ``quiesce-host snapshot ... VM`` as a sysadmin uses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from host.cli.main import main
from host.engine.vm import VM
from tests.helpers.disks import MiB, ext4_image, need_qemu, run
from tests.helpers.hostcli import cli, holds_the_image

GRAIN = 64 * 1024


def test_a_vm_session_from_create_to_delete_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v = tmp_path / "db"
    code, out, _ = cli(capsys, "vm", "create", v, "--disk", "root:2M", "--disk", "wal:1M")
    assert code == 0 and "created VM" in out and (v / "wal" / "disk.vmdk").exists()
    with VM.open(v) as vm:
        vm.disks["root"].write(0, b"root-1")
        vm.disks["wal"].write(0, b"wal-1")
    assert cli(capsys, "snapshot", "create", v, "before", "-d", "before the upgrade")[0] == 0
    assert cli(capsys, "vm", "add-disk", v, "data", "--size", "1M")[0] == 0
    with VM.open(v) as vm:
        vm.disks["wal"].write(0, b"wal-2")
    assert cli(capsys, "snapshot", "create", v, "after", "--consistency", "application")[0] == 0

    code, out, _ = cli(capsys, "vm", "info", v, "--json")
    info = json.loads(out)
    assert code == 0 and [d["name"] for d in info["disks"]] == ["root", "wal", "data"]
    assert info["position"] == "after" and info["snapshots"] == 2
    code, out, _ = cli(capsys, "vm", "info", v)
    assert "position   after" in out and "wal" in out and "CURRENT FILE" in out

    code, out, _ = cli(capsys, "snapshot", "list", v)
    assert out.splitlines()[0].startswith("before ") and "└─ after" in out
    listing = json.loads(cli(capsys, "snapshot", "list", v, "--json")[1])
    assert set(listing[1]["layers"]) == {"root", "wal", "data"}
    assert set(listing[0]["layers"]) == {"root", "wal"}  # data did not exist then
    code, out, _ = cli(capsys, "snapshot", "show", v, "after", "--json")
    assert json.loads(out)["consistency"] == "application" and json.loads(out)["parent"] == "before"
    code, out, _ = cli(capsys, "snapshot", "show", v, "after")
    head = out.splitlines()[0]
    assert code == 0  # the layer of every disk the snapshot froze (data: its base, added later)
    assert head.endswith("layers data disk.vmdk, root disk-000001.vmdk, wal disk-000001.vmdk")
    assert cli(capsys, "vm", "check", v)[:2] == (0, f"{v}: no problems found\n")
    assert cli(capsys, "disk", "check", v / "wal")[0] == 0

    code, _, err = cli(capsys, "snapshot", "revert", v, "before")
    assert code != 0 and "disk 'data' did not exist at snapshot 'before'" in err
    assert cli(capsys, "snapshot", "revert", v, "after")[0] == 0
    assert cli(capsys, "snapshot", "delete", v, "before")[0] == 0
    code, _, err = cli(capsys, "snapshot", "delete", v, "--all")
    assert code == 0
    with VM.open(v, readonly=True) as vm:
        assert vm.disks["wal"].read(0, 5) == b"wal-2" and vm.snapshot_list() == []
        assert all(d.tree.layers == {"disk.vmdk": None} for d in vm.disks.values())


def test_a_disk_of_a_vm_is_refused_alone_and_checked_against_the_vm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v = tmp_path / "db"
    assert cli(capsys, "vm", "create", v, "--disk", "root:1M", "--disk", "wal:1M")[0] == 0
    code, _, err = cli(capsys, "snapshot", "create", v / "wal", "alone")
    assert code == 2 and "a disk of the VM" in err and f"snapshot create {v} NAME" in err
    assert cli(capsys, "snapshot", "create", v, "a")[0] == 0
    saved = tmp_path / "wal-at-a"
    shutil.copytree(v / "wal", saved)
    assert cli(capsys, "snapshot", "create", v, "b")[0] == 0
    shutil.rmtree(v / "wal")
    shutil.copytree(saved, v / "wal")  # an old copy of one disk put back
    code, out, _ = cli(capsys, "disk", "check", v / "wal")
    assert code == 1 and "another history" in out and str(v / "wal" / "tree.json") in out
    code, out, _ = cli(capsys, "vm", "check", v, "--json")
    report = json.loads(out)
    assert code == 11 and not report["ok"]
    assert any("'wal'" in p and "another history" in p for p in report["problems"])
    code, _, err = cli(capsys, "snapshot", "list", v)
    assert code == 11 and "'wal'" in err and "vm check" in err


def test_bad_disk_specs_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["vm", "create", str(tmp_path / "v"), "--disk", "nosize:"])
    assert "NAME:SIZE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["vm", "create", str(tmp_path / "v"), "--disk", "a", "--from", "a"])
    assert "NAME=IMAGE" in capsys.readouterr().err
    code, _, err = cli(capsys, "vm", "create", tmp_path / "v", "--disk", "nosize")
    assert code == 2 and "disk 'nosize' needs a size, or an image" in err
    assert not (tmp_path / "v").exists()
    code, _, err = cli(capsys, "vm", "create", tmp_path / "v", "--disk", "a/b:1M")
    assert code == 2 and "disk name 'a/b'" in err and not (tmp_path / "v").exists()


def test_a_vm_starts_from_a_filesystem_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_qemu()
    image = ext4_image(tmp_path / "root.raw", 4 * MiB)
    v = tmp_path / "vm"
    code, out, err = cli(
        capsys, "vm", "create", v, "--disk", "root", "--disk", "wal:1M", "--from", f"root={image}"
    )
    assert code == 0 and f"created disk root in {v / 'root'} (4.0 MiB) from {image}" in out
    assert "copy root: 4.0 MiB/4.0 MiB 100%" in err
    code, out, _ = cli(capsys, "vm", "add-disk", v, "spare", "--from", image, "--size", "8M")
    assert code == 0 and "(8.0 MiB) from" in out
    for disk in ("root", "spare"):
        holds_the_image(capsys, v / disk, image, tmp_path / f"{disk}.raw")


def test_a_qcow2_image_is_refused_with_the_command_that_converts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_qemu()
    qcow2 = tmp_path / "root.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", qcow2, "4M")
    code, _, err = cli(
        capsys, "vm", "create", tmp_path / "v", "--disk", "root", "--from", f"root={qcow2}"
    )
    assert code == 2 and f"qemu-img convert -O raw {qcow2} {tmp_path / 'root.raw'}" in err
    assert not (tmp_path / "v").exists()
    code, _, err = cli(
        capsys,
        "vm",
        "create",
        tmp_path / "v",
        "--disk",
        "a:1M",
        "--from",
        f"a={qcow2}",
        "--from",
        f"a={qcow2}",
    )
    assert code == 2 and "--from names a disk twice" in err


def test_help_explains_the_vm_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["vm", "create", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--disk NAME[:SIZE]" in out and "--from NAME=IMAGE" in out and "same instant" in out
    with pytest.raises(SystemExit):
        main(["snapshot", "create", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "VM folder" in out and "every disk is cut at the same instant" in out
