"""``quiesce-host disk ...`` and ``quiesce-host snapshot ...`` as a sysadmin uses them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from host.cli.main import main
from host.engine.disk import Disk
from host.lab.local import console_script
from tests.helpers.disks import MiB, ext4_image, need_qemu, run
from tests.helpers.env import REPO, need_root
from tests.helpers.hostcli import cli, holds_the_image

GRAIN = 64 * 1024


def test_a_session_from_create_to_delete_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "vm"
    assert cli(capsys, "disk", "create", d, "--size", "4M")[0] == 0
    with Disk.open(d) as disk:
        disk.write(0, b"first")
    assert cli(capsys, "snapshot", "create", d, "before", "-d", "before the upgrade")[0] == 0
    with Disk.open(d) as disk:
        disk.write(0, b"second")
    assert cli(capsys, "snapshot", "create", d, "after", "--consistency", "application")[0] == 0

    code, out, _ = cli(capsys, "disk", "info", d, "--json")
    info = json.loads(out)
    assert code == 0 and info["current"] == str(d / "disk-000002.vmdk")
    assert info["chain"] == ["disk.vmdk", "disk-000001.vmdk", "disk-000002.vmdk"]
    code, out, _ = cli(capsys, "disk", "info", d)
    assert "current    " + str(d / "disk-000002.vmdk") in out

    code, out, _ = cli(capsys, "snapshot", "list", d)
    assert out.splitlines()[0].startswith("before ")
    assert "└─ after" in out and "<- you are here" in out.splitlines()[1]
    assert json.loads(cli(capsys, "snapshot", "list", d, "--json")[1])[0]["name"] == "before"

    code, _, err = cli(capsys, "disk", "export", d, tmp_path / "before.raw", "--snapshot", "before")
    assert code == 0 and "export: 4.0 MiB/4.0 MiB 100%" in err and "MiB/s ETA" in err
    assert (tmp_path / "before.raw").read_bytes()[:6] == b"first\0"
    assert cli(capsys, "disk", "check", d)[:2] == (0, f"{d}: no problems found\n")

    assert cli(capsys, "snapshot", "revert", d, "before")[0] == 0
    code, _, err = cli(capsys, "snapshot", "delete", d, "--all")
    assert code == 0 and "merging into the base" in err
    with Disk.open(d, readonly=True) as disk:
        assert disk.read(0, 6) == b"first\0" and disk.snapshot_list() == []


def test_errors_name_the_file_and_exit_with_their_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "vm"
    cli(capsys, "disk", "create", d, "--size", "1M")
    code, _, err = cli(capsys, "snapshot", "revert", d, "missing")
    assert code == 15 and f"{d}: no snapshot named 'missing'" in err
    cli(capsys, "snapshot", "create", d, "s")
    (d / "disk-000001.vmdk").write_bytes(b"garbage" * 100)
    code, out, _ = cli(capsys, "disk", "check", d)
    assert code == 10 and f"problem: {d / 'disk-000001.vmdk'}: bad magic" in out
    code, _, err = cli(capsys, "disk", "info", d)
    assert code == 10 and "disk-000001.vmdk: bad magic" in err
    code, _, err = cli(capsys, "snapshot", "delete", d)
    assert code == 2 and "NAME or --all" in err


def test_a_busy_disk_says_who_holds_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "vm"
    cli(capsys, "disk", "create", d, "--size", "1M")
    with Disk.open(d):
        code, _, err = cli(capsys, "snapshot", "revert", d, "x")
    assert code == 17 and "in use by another process" in err


def test_sizes_accept_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "disk", "create", tmp_path / "a", "--size", "100K")[0] == 0
    with Disk.open(tmp_path / "a") as disk:
        assert disk.size == 2 * GRAIN  # rounded up to whole grains
    with pytest.raises(SystemExit):
        main(["disk", "create", str(tmp_path / "b"), "--size", "lots"])


def test_a_disk_starts_from_a_filesystem_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_qemu()
    image = ext4_image(tmp_path / "root.raw", 4 * MiB)
    before = image.read_bytes()
    d = tmp_path / "root"
    code, out, err = cli(capsys, "disk", "create", d, "--from", image)
    assert code == 0 and f"created {d} (4.0 MiB, {4 * MiB} bytes) from {image}" in out
    assert "copy: 4.0 MiB/4.0 MiB 100%" in err
    run("qemu-img", "check", d / "disk.vmdk")
    holds_the_image(capsys, d, image, tmp_path / "root-export.raw")
    assert image.read_bytes() == before  # never written


def test_a_disk_starts_from_a_block_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As from an LVM volume: the device is read whole, and its unused space stays holes."""
    need_root()
    need_qemu()
    image = ext4_image(tmp_path / "volume.raw", 16 * MiB)
    device = run("losetup", "--find", "--show", "--read-only", image).stdout.strip()
    try:
        d = tmp_path / "root"
        code, out, err = cli(capsys, "disk", "create", d, "--from", device)
        assert code == 0 and f"{16 * MiB} bytes) from {device}" in out, err
        assert "copy: 16.0 MiB/16.0 MiB 100%" in err
    finally:
        run("losetup", "--detach", device)
    holds_the_image(capsys, d, image, tmp_path / "root-export.raw")


def test_a_disk_is_not_made_from_what_is_not_a_raw_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_qemu()
    vmdk = tmp_path / "other.vmdk"
    run("qemu-img", "create", "-q", "-f", "vmdk", vmdk, "4M")
    small = ext4_image(tmp_path / "small.raw", 4 * MiB)
    misnamed = tmp_path / "disk.raw"  # a qcow2 whatever its name says
    run("qemu-img", "create", "-q", "-f", "qcow2", misnamed, "4M")
    for args, words in (
        (["--from", vmdk], f"{vmdk}: a VMDK (sparse extent) image, not a raw one"),
        (["--from", misnamed], f"-O raw {misnamed} {tmp_path / 'disk-converted.raw'}"),
        (["--from", tmp_path], f"{tmp_path}: neither a raw image file nor a block device"),
        (["--from", small, "--size", "1M"], f"{small}: the image is {4 * MiB} bytes, larger"),
        ([], "needs --size, or --from IMAGE"),
    ):
        code, _, err = cli(capsys, "disk", "create", tmp_path / "d", *args)
        assert code == 2 and words in err
        assert not any((tmp_path / "d").glob("*"))


def test_the_console_script_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [console_script("quiesce-host"), "disk", "create", str(tmp_path / "vm"), "--size", "1M"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "created" in proc.stdout
