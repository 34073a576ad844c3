"""``quiesce-host serve VM``: every disk of a VM from one process, one NBD export (and one
FUSE file) per disk by name, and a snapshot through the control socket that cuts every disk
at the same instant."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from host.engine.vm import VM
from host.lab.local import console_script
from host.serve import nbd_wire
from host.serve.control_client import request
from tests.helpers.env import need, need_root
from tests.helpers.nbdclient import Client
from tests.helpers.vms import DISKS
from tests.helpers.waiting import wait_until

MiB = 1024 * 1024


@pytest.fixture
def vm_dir(short_tmp: Path) -> Path:
    folder = short_tmp / "vm"
    VM.create(folder, [(n, 4 * MiB) for n in DISKS]).close()
    return folder


def port_of(uri: str) -> int:
    return int(uri.split(":")[2].split("/")[0])


def test_a_vm_is_served_as_one_export_per_disk(served, vm_dir, need_qemu) -> None:  # type: ignore[no-untyped-def]
    s = served(str(vm_dir), "--nbd", "127.0.0.1:0")
    lines = [ln.rsplit(" ", 1)[1] for ln in s.wait_all(f"serving {vm_dir} over NBD at", 3)]
    assert [u.rsplit("/", 1)[1] for u in lines] == list(DISKS)
    for i, uri in enumerate(lines):
        subprocess.run(
            ["qemu-io", "-f", "raw", "-c", f"write -P {0x31 + i} 0 64k", uri],
            check=True,
            capture_output=True,
            timeout=60,
        )
    client = Client(port_of(lines[0]))
    client.greeting()
    client.option(nbd_wire.OPT_LIST)
    names = [body[4:].decode() for rtype, body in client.replies_until_final() if body]
    assert names == list(DISKS)
    replies = client.go(b"")  # a VM has no default export: the client must name a disk
    assert replies[-1][0] == nbd_wire.REP_ERR_UNKNOWN and b"'root', 'wal', 'data'" in replies[-1][1]
    client.close()
    status = request(vm_dir, "status")
    assert set(status["io"]) == set(DISKS) and status["io"]["wal"]["bytes_written"] == 65536
    assert request(vm_dir, "info")["disks"][1]["name"] == "wal"
    assert s.stop(signal.SIGTERM) == 0
    with VM.open(vm_dir, readonly=True) as vm:
        for i, name in enumerate(DISKS):
            assert vm.disks[name].read(0, 65536) == bytes([0x31 + i]) * 65536


def test_a_snapshot_of_a_served_vm_cuts_every_disk_at_one_instant(served, vm_dir) -> None:  # type: ignore[no-untyped-def]
    """A client writes a counter to each disk in turn, one write acknowledged before the next
    is sent, while snapshots are taken: each snapshot holds a prefix of that sequence, so its
    disks' counters never rise along the disks and differ by at most one. A cut disk by disk
    would let disk 1 be cut at n while n+1 still reached disk 2 before its own cut."""
    s = served(str(vm_dir), "--nbd", "127.0.0.1:0")
    s.wait_for("control socket")
    uris = [ln.rsplit(" ", 1)[1] for ln in s.wait_all(" over NBD at ", len(DISKS))]
    clients = []
    for uri in uris:
        c = Client(port_of(uri))
        c.greeting()
        assert c.go(uri.rsplit("/", 1)[1].encode())[-1][0] == nbd_wire.REP_ACK
        clients.append(c)
    stop, written = threading.Event(), [0]

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for c in clients:
                assert c.write(0, n.to_bytes(8, "little") * 64) == 0
            written[0] = n

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    replies = []
    try:
        for i in range(8):
            seen = written[0]
            wait_until(lambda: written[0] >= seen + 3 or not t.is_alive(), 30)  # noqa: B023
            replies.append(request(vm_dir, "snapshot-create", {"name": f"cut{i}"}, timeout=30))
    finally:
        stop.set()
        t.join(30)
    for c in clients:
        c.disconnect()
    assert written[0] > 3 * 8
    for reply in replies:  # the pause, per disk and overall
        assert set(reply["disks"]) == set(DISKS)
        assert all(0 <= d["paused_ms"] <= reply["paused_ms"] for d in reply["disks"].values())
    assert s.stop(signal.SIGTERM) == 0
    with VM.open(vm_dir) as vm:
        assert vm.check() == []
        for snap in vm.snapshot_list():
            counts = []
            for name in DISKS:
                vm.disks[name].export_raw(vm_dir / "cut.raw", snapshot=snap["name"], sync=False)
                counts.append(int.from_bytes((vm_dir / "cut.raw").read_bytes()[:8], "little"))
            assert counts == sorted(counts, reverse=True), (snap["name"], counts)
            assert counts[0] - counts[-1] <= 1, (snap["name"], counts)
        (vm_dir / "cut.raw").unlink()


def test_the_snapshot_verbs_reach_a_served_vm_through_its_server(served, vm_dir) -> None:  # type: ignore[no-untyped-def]
    cli = [console_script("quiesce-host")]
    s = served(str(vm_dir), "--nbd", "127.0.0.1:0")
    s.wait_for("control socket")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)

    assert run("snapshot", "create", str(vm_dir), "live").returncode == 0
    listed = run("snapshot", "list", str(vm_dir), "--json")
    assert listed.returncode == 0 and '"live"' in listed.stdout
    info = run("vm", "info", str(vm_dir), "--json")
    assert info.returncode == 0 and '"wal"' in info.stdout
    revert = run("snapshot", "revert", str(vm_dir), "live")
    assert revert.returncode != 0 and "refused while the disk is served" in revert.stderr
    alone = run("snapshot", "create", str(vm_dir / "wal"), "alone")
    assert alone.returncode != 0 and "a disk of the VM" in alone.stderr
    assert run("snapshot", "delete", str(vm_dir), "live").returncode == 0
    assert s.stop(signal.SIGTERM) == 0


def test_one_disk_of_a_served_vm_is_shown_and_exported_while_its_clients_write(
    served, vm_dir
) -> None:  # type: ignore[no-untyped-def]
    s = served(str(vm_dir), "--nbd", "127.0.0.1:0")
    s.wait_for("control socket")
    uris = dict(
        (u.rsplit("/", 1)[1], u)
        for u in (ln.rsplit(" ", 1)[1] for ln in s.wait_all(" over NBD at ", 3))
    )
    wal = Client(port_of(uris["wal"]))
    wal.greeting()
    assert wal.go(b"wal")[-1][0] == nbd_wire.REP_ACK
    assert wal.write(0, b"W" * 65536) == 0
    request(vm_dir, "snapshot-create", {"name": "cut"})
    assert wal.write(0, b"X" * 65536) == 0  # after the cut: not in the export

    def export(*args: str | Path) -> subprocess.CompletedProcess[str]:
        cmd = [console_script("quiesce-host"), "disk", "export", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    shown = subprocess.run(
        [console_script("quiesce-host"), "disk", "info", str(vm_dir / "wal"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["current"] == str(vm_dir / "wal" / "disk-000001.vmdk")
    out = vm_dir.parent / "wal-cut.raw"
    done = export(vm_dir / "wal", out, "--snapshot", "cut")
    assert done.returncode == 0, done.stderr
    assert f"by the server of the VM {vm_dir}" in done.stdout
    assert out.read_bytes()[:65536] == b"W" * 65536 and out.stat().st_size == 4 * MiB
    assert wal.write(65536, b"Y" * 512) == 0  # the clients went on, and go on
    live = export(vm_dir / "wal", out, "--snapshot", "missing")
    assert live.returncode == 2 and "the server refused export: SnapshotNotFound: " in live.stderr
    assert "no snapshot named 'missing'" in live.stderr and live.stderr.count("refused") == 1
    whole = export(vm_dir, out, "--snapshot", "cut")
    assert whole.returncode != 0 and "a VM has one image per disk" in whole.stderr
    wal.close()
    assert s.stop(signal.SIGTERM) == 0


@pytest.mark.root
def test_fuse_shows_one_file_per_disk(served, vm_dir, short_tmp) -> None:  # type: ignore[no-untyped-def]
    need_root()
    need(os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None, "no FUSE")
    mnt = short_tmp / "mnt"
    mnt.mkdir()
    s = served(str(vm_dir), "--fuse", str(mnt))
    files = [Path(ln.rsplit(" ", 1)[1]) for ln in s.wait_all(f"serving {vm_dir} as", 3)]
    assert files == [mnt / f"{n}.raw" for n in DISKS]
    assert sorted(os.listdir(mnt)) == sorted(f"{n}.raw" for n in DISKS)
    for i, f in enumerate(files):
        assert f.stat().st_size == 4 * MiB
        with open(f, "r+b") as out:
            out.write(bytes([0x41 + i]) * 4096)
            out.flush()
            os.fsync(out.fileno())
    assert s.stop(signal.SIGTERM) == 0
    assert not os.path.ismount(mnt)
    with VM.open(vm_dir, readonly=True) as vm:
        for i, name in enumerate(DISKS):
            assert vm.disks[name].read(0, 4096) == bytes([0x41 + i]) * 4096
