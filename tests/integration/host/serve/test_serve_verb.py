"""``quiesce-host serve`` as a process: where it serves, the control socket, clean stops."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from agent.protocol import Unreachable
from host.lab.local import console_script
from host.serve.control_client import request, socket_path
from tests.helpers.env import need, need_root

MiB = 1024 * 1024


@pytest.fixture
def image(short_tmp) -> Path:
    path = short_tmp / "disk.img"
    path.write_bytes(bytes(8 * MiB))
    return path


def test_nbd_serve_prints_where_and_stops_cleanly_on_sigterm(served, image):
    need(shutil.which("qemu-io") is not None, "qemu-io is not installed (qemu-utils)")
    s = served(str(image), "--nbd", "127.0.0.1:0")
    uri = s.uri
    assert uri.startswith("nbd://127.0.0.1:")
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 4096", uri],
        check=True,
        capture_output=True,
        timeout=60,
    )
    status = request(image, "status")
    assert status["pid"] == s.proc.pid
    assert status["serving"] == [{"kind": "nbd", "uri": uri}]
    assert status["io"]["bytes_written"] == 4096
    assert s.stop(signal.SIGTERM) == 0
    assert s.lines[-1] == "stopped"
    assert image.read_bytes()[4096:8192] == b"\x5a" * 4096
    assert not socket_path(image).exists()
    with pytest.raises(Unreachable):
        request(image, "status", timeout=2)


def test_sigint_stops_too(served, image):
    s = served(str(image), "--nbd", "127.0.0.1:0")
    assert s.uri.startswith("nbd://")
    assert s.stop(signal.SIGINT) == 0


def test_refuses_a_non_loopback_address_and_a_missing_disk(served, image, short_tmp):
    s = served(str(image), "--nbd", "0.0.0.0:0")
    assert s.proc.wait(20) == 2
    assert "not a loopback address" in s.stderr
    s = served(str(short_tmp / "nope"), "--nbd", "127.0.0.1:0")
    assert s.proc.wait(20) == 2
    assert "no such disk" in s.stderr
    s = served(str(image))
    assert s.proc.wait(20) == 2


@pytest.mark.root
def test_fuse_serve_unmounts_on_sigterm(served, image, short_tmp):
    need_root()
    need(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    mnt = short_tmp / "mnt"
    mnt.mkdir()
    s = served(str(image), "--fuse", str(mnt), "--nbd", "127.0.0.1:0")
    file = Path(s.wait_for(f"serving {image} as").rsplit(" ", 1)[1])
    assert file == mnt / "disk.raw"
    with open(file, "r+b") as f:
        f.seek(MiB)
        f.write(b"through fuse")
        f.flush()
        os.fsync(f.fileno())
    kinds = {entry["kind"] for entry in request(image, "status")["serving"]}
    assert kinds == {"nbd", "fuse"}
    assert s.stop(signal.SIGTERM) == 0
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []
    assert image.read_bytes()[MiB : MiB + 12] == b"through fuse"


@pytest.mark.root
def test_fuse_on_a_missing_mountpoint_is_a_clear_error(served, image, short_tmp):
    need_root()
    s = served(str(image), "--fuse", str(short_tmp / "absent"))
    assert s.proc.wait(20) == 2
    assert "not a directory" in s.stderr


def test_the_cli_exports_a_snapshot_of_a_served_disk_through_the_server(served, short_tmp):
    need(shutil.which("qemu-io") is not None, "qemu-io is not installed (qemu-utils)")
    cli = [console_script("quiesce-host")]
    disk = short_tmp / "vm"
    subprocess.run([*cli, "disk", "create", str(disk), "--size", "64M"], check=True, timeout=60)
    s = served(str(disk), "--nbd", "127.0.0.1:0")
    qemu = ["qemu-io", "-f", "raw"]
    subprocess.run(
        [*qemu, "-c", "write -P 0x11 0 8M", s.uri], check=True, capture_output=True, timeout=60
    )
    subprocess.run([*cli, "snapshot", "create", str(disk), "nightly"], check=True, timeout=60)
    subprocess.run(
        [*qemu, "-c", "write -P 0x22 0 1M", s.uri], check=True, capture_output=True, timeout=60
    )
    out = short_tmp / "nightly.raw"
    done = subprocess.run(
        [*cli, "disk", "export", str(disk), str(out), "--snapshot", "nightly"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "by the server holding the disk" in done.stdout
    check = subprocess.run(
        [*qemu, "-c", "read -P 0x11 0 8M", str(out)], capture_output=True, text=True, timeout=60
    )
    assert "Pattern verification failed" not in check.stdout and check.returncode == 0
    live = subprocess.run(
        [*cli, "disk", "export", str(disk), str(short_tmp / "live.raw")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert live.returncode == 17 and "--snapshot NAME" in live.stderr
    assert s.stop(signal.SIGTERM) == 0
