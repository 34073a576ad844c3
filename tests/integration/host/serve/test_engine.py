"""The servers over the real delta-disk engine: qemu reads what NBD clients wrote, snapshots
taken through the control socket hold exactly the writes acknowledged before the cut."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.protocol import Refused
from host.engine.disk import Disk
from host.serve.control import ControlServer
from host.serve.control_client import request
from host.serve.device import IOGate
from tests.helpers.env import need
from tests.helpers.nbdclient import Client

pytestmark = pytest.mark.qemu

MiB = 1024 * 1024
BLOCK = 4096


@pytest.fixture
def disk(short_tmp):
    d = Disk.create(short_tmp / "disk", 32 * MiB)
    yield d
    d.close()


@pytest.fixture
def live(disk, serve):
    """The disk served over NBD with its control socket, as ``quiesce-host serve`` does."""
    gate = IOGate()
    server = serve(disk, gate=gate)
    control = ControlServer(disk.folder, disk, gate)
    control.start()
    yield server
    control.shutdown()


def qemu_io(uri: str, *commands: str) -> None:
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    proc = subprocess.run([*args, uri], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr


def export(disk: Disk, tmp: Path, snapshot: str | None = None) -> bytes:
    out = tmp / f"export-{snapshot or 'current'}.raw"
    disk.export_raw(out, snapshot, sync=False)
    data = out.read_bytes()
    out.unlink()
    return data


def test_qemu_writes_through_nbd_and_snapshots_keep_their_state(disk, live, short_tmp):
    need(shutil.which("qemu-io") is not None, "qemu-io is not installed (qemu-utils)")
    model = bytearray(disk.size)
    states: dict[str, bytes] = {}
    rng = random.Random(6)
    for round_ in range(4):
        cmds = []
        for _ in range(40):
            length = rng.choice([512, 4096, 65536, 70_000, 200_000, rng.randrange(1, 300_000)])
            offset = rng.randrange(0, disk.size - length)
            if rng.random() < 0.8:
                p = rng.randrange(1, 256)
                cmds.append(f"write -P {p} {offset} {length}")
                model[offset : offset + length] = bytes([p]) * length
            else:
                cmds.append(f"write -z {offset} {length}")
                model[offset : offset + length] = bytes(length)
        qemu_io(live.uri, *cmds)
        name = f"r{round_}"
        reply = request(disk.folder, "snapshot-create", {"name": name, "description": "t"})
        assert reply["snapshot"]["name"] == name
        states[name] = bytes(model)
    assert export(disk, short_tmp) == model
    for name, state in states.items():
        assert export(disk, short_tmp, name) == state, name
    # qemu reads the engine's own VMDK chain and the NBD view the same
    top = disk.current_file()
    proc = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "raw", "-F", "vmdk", live.uri, str(top)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listing = request(disk.folder, "snapshot-list")
    assert [s["name"] for s in listing] == ["r0", "r1", "r2", "r3"]


def test_snapshot_under_continuous_writes_holds_every_acknowledged_write(disk, live, short_tmp):
    regions, blocks = 2, 1024
    states = [{"sent": 0, "acked": 0} for _ in range(regions)]
    stop = threading.Event()

    def writer(region: int) -> None:
        client = Client(live.port).connect()
        for i in range(blocks):
            if stop.is_set():
                break
            states[region]["sent"] = i + 1
            block = struct.pack(">II", region + 1, i + 1) * (BLOCK // 8)
            assert client.write((region * blocks + i) * BLOCK, block) == 0
            states[region]["acked"] = i + 1
        client.disconnect()

    threads = [threading.Thread(target=writer, args=(r,)) for r in range(regions)]
    for t in threads:
        t.start()
    bounds = {}
    try:
        for n in range(2):
            time.sleep(0.2)
            before = [s["acked"] for s in states]
            request(disk.folder, "snapshot-create", {"name": f"cut{n}"})
            bounds[f"cut{n}"] = (before, [s["sent"] for s in states])
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    for name, (before, after) in bounds.items():
        data = export(disk, short_tmp, name)
        for r in range(regions):
            k = 0
            base = r * blocks * BLOCK
            while k < blocks and data[base + k * BLOCK : base + (k + 1) * BLOCK] == struct.pack(
                ">II", r + 1, k + 1
            ) * (BLOCK // 8):
                k += 1
            rest = data[base + k * BLOCK : base + blocks * BLOCK]
            assert rest == bytes(len(rest)), f"{name}: gap or torn write after block {k}"
            assert before[r] <= k <= after[r], (name, r, before, k, after)
    current = export(disk, short_tmp)
    for r in range(regions):
        n = states[r]["acked"]
        last = (r * blocks + n - 1) * BLOCK
        assert current[last : last + 8] == struct.pack(">II", r + 1, n)


def test_revert_and_delete_while_serving(short_tmp, serve, monkeypatch):
    folder = short_tmp / "branchy"
    d = Disk.create(folder, 4 * MiB)
    d.write(0, b"A" * 4096)
    d.snapshot_create("a")
    d.write(0, b"B" * 4096)
    d.snapshot_create("b")
    d.snapshot_revert("a")  # 'b' is now another branch; the live state reads through 'a'
    gate = IOGate()
    server = serve(d, gate=gate)
    control = ControlServer(folder, d, gate)
    control.start()
    try:
        client = Client(server.port).connect()
        assert client.read(0, 4) == (0, b"AAAA")
        with pytest.raises(Refused) as err:
            request(folder, "snapshot-revert", {"name": "a"})
        assert err.value.error_class == "Refused"
        request(folder, "snapshot-delete", {"name": "b"})  # its branch goes, nothing merges
        assert [s["name"] for s in d.snapshot_list()] == ["a"]
        assert client.read(0, 4) == (0, b"AAAA")
        assert client.write(0, b"C" * 4096) == 0
        with monkeypatch.context() as m:  # as if much had been written since 'a'
            m.setattr("host.serve.control.LIVE_MERGE_LIMIT", 0)
            with pytest.raises(Refused) as err:
                request(folder, "snapshot-delete", {"name": "a"})
            assert err.value.error_class == "Refused" and "merges 0.1 MiB" in err.value.desc
        request(folder, "snapshot-delete", {"name": "a"})  # 64 KiB to merge: done live
        assert d.snapshot_list() == [] and d.info()["chain"] == ["disk.vmdk"]
        assert client.read(0, 4) == (0, b"CCCC")
        client.disconnect()
    finally:
        control.shutdown()
    assert d.check() == []
    assert d.read(0, 4) == b"CCCC"
    d.close()


def test_the_snapshot_just_taken_can_be_taken_back_while_serving(live, disk):
    client = Client(live.port).connect()
    assert client.write(0, b"A" * BLOCK) == 0
    request(disk.folder, "snapshot-create", {"name": "oops"})
    assert client.write(BLOCK, b"B" * BLOCK) == 0  # written after the cut
    request(
        disk.folder,
        "snapshot-update",
        {"name": "oops", "consistency": "crash", "report": {"why": "thaw not confirmed"}},
    )
    assert disk.snapshot_get("oops")["report"] == {"why": "thaw not confirmed"}
    with pytest.raises(Refused) as err:
        request(disk.folder, "snapshot-update", {"name": "oops", "consistency": "perfect"})
    assert err.value.error_class == "BadRequest"
    reply = request(disk.folder, "snapshot-delete", {"name": "oops"})
    assert reply["deleted"] == "oops"
    assert disk.snapshot_list() == [] and disk.info()["chain"] == ["disk.vmdk"]
    assert client.read(0, 2 * BLOCK) == (0, b"A" * BLOCK + b"B" * BLOCK)
    assert client.write(2 * BLOCK, b"C" * BLOCK) == 0  # the clients never noticed
    client.disconnect()
    assert disk.check() == []
    assert disk.read(0, 3 * BLOCK) == b"A" * BLOCK + b"B" * BLOCK + b"C" * BLOCK


def test_a_snapshot_exports_while_clients_write_and_deletes_wait_for_it(live, disk, short_tmp):
    client = Client(live.port).connect()
    assert client.write(0, b"S" * BLOCK) == 0
    request(disk.folder, "snapshot-create", {"name": "backup"})
    started, release = threading.Event(), threading.Event()
    export_raw = disk.export_raw

    def held_export(out, snapshot, progress=None):  # the export stops after its first chunk
        def step(done, total):
            progress(done, total)
            started.set()
            release.wait(10)

        export_raw(out, snapshot, progress=step)

    disk.export_raw = held_export
    out = short_tmp / "backup.raw"
    reply = {}
    worker = threading.Thread(
        target=lambda: reply.update(
            request(disk.folder, "export", {"snapshot": "backup", "out": str(out)})
        )
    )
    worker.start()
    try:
        assert started.wait(10)
        status = request(disk.folder, "status")
        assert status["export"]["snapshot"] == "backup" and status["export"]["done"] > 0
        assert client.write(0, b"L" * BLOCK) == 0  # clients go on while it runs
        with pytest.raises(Refused) as err:
            request(disk.folder, "snapshot-delete", {"name": "backup"})
        assert err.value.error_class == "Refused" and "export" in err.value.desc
    finally:
        release.set()
        worker.join(10)
    assert reply["exported"] == "backup"
    image = out.read_bytes()
    assert image[:BLOCK] == b"S" * BLOCK and len(image) == disk.size  # the snapshot, not later
    assert client.read(0, BLOCK) == (0, b"L" * BLOCK)
    assert request(disk.folder, "status")["export"] is None
    request(disk.folder, "snapshot-delete", {"name": "backup"})  # once it is done
    with pytest.raises(Refused) as err:
        request(disk.folder, "export", {"out": str(out)})  # the live state is not a point
    assert err.value.error_class == "BadRequest"
    with pytest.raises(Refused) as err:  # 'disk' names a disk of a VM: this is one disk
        request(disk.folder, "export", {"snapshot": "x", "out": str(out), "disk": "wal"})
    assert err.value.error_class == "BadRequest" and "is one disk, not a VM" in err.value.desc
    client.disconnect()
