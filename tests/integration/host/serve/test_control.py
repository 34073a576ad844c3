"""The control socket: snapshots cut cleanly while clients write, and unsafe requests refused."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from agent.protocol import Refused, Unreachable
from host.serve.control import ControlServer, ServeError
from host.serve.control_client import request, socket_path
from host.serve.device import GatedDevice, IOGate, RawFile
from tests.helpers.memdisk import MemDisk
from tests.helpers.nbdclient import Client

MiB = 1024 * 1024
BLOCK = 4096


@pytest.fixture
def control(short_tmp):
    made = []

    def factory(disk, gate=None, folder=None):
        server = ControlServer(folder or short_tmp, disk, gate or IOGate())
        server.start()
        made.append(server)
        return server

    yield factory
    for server in made:
        server.shutdown()


def test_gate_pause_waits_for_io_in_flight_and_holds_new_io_back():
    gate = IOGate()
    log: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def slow_io():
        with gate.io():
            inside.set()
            release.wait(5)
            log.append("io1 done")

    def later_io():
        with gate.io():
            log.append("io2")

    t1 = threading.Thread(target=slow_io)
    t1.start()
    inside.wait(5)

    def pauser():
        with gate.paused(timeout=5):
            log.append("paused")
            time.sleep(0.1)
            log.append("resumed")

    t2 = threading.Thread(target=pauser)
    t2.start()
    time.sleep(0.05)
    t3 = threading.Thread(target=later_io)
    t3.start()
    time.sleep(0.05)
    assert log == []  # pause waits for io1; io2 waits behind the pause
    release.set()
    for t in (t1, t2, t3):
        t.join(5)
    assert log == ["io1 done", "paused", "resumed", "io2"]


def test_gate_pause_gives_up_when_io_does_not_drain():
    gate = IOGate()
    release = threading.Event()
    inside = threading.Event()

    def stuck():
        with gate.io():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=stuck)
    t.start()
    inside.wait(5)
    with pytest.raises(TimeoutError), gate.paused(timeout=0.1):
        pass
    assert not gate.is_paused
    with gate.io():  # I/O flows again
        pass
    release.set()
    t.join(5)


def writer(port: int, region: int, blocks: int, state: dict, stop: threading.Event) -> None:
    client = Client(port).connect()
    for i in range(blocks):
        if stop.is_set():
            break
        state["sent"] = i + 1  # counts writes started
        payload = struct.pack(">II", region, i + 1) * (BLOCK // 8)
        assert client.write((region * blocks + i) * BLOCK, payload) == 0
        state["acked"] = i + 1
    client.disconnect()


def written_prefix(data: bytes, region: int, blocks: int) -> int:
    """How many leading blocks of the region hold their write; everything after must be zero."""
    k = 0
    base = region * blocks * BLOCK
    while k < blocks:
        block = data[base + k * BLOCK : base + (k + 1) * BLOCK]
        if block != struct.pack(">II", region, k + 1) * (BLOCK // 8):
            break
        k += 1
    rest = data[base + k * BLOCK : base + blocks * BLOCK]
    assert rest == bytes(len(rest)), f"region {region}: a gap or a torn write after block {k}"
    return k


def test_snapshot_while_clients_write_cuts_between_writes(serve, control, short_tmp):
    regions, blocks = 3, 4096
    disk = MemDisk(regions * blocks * BLOCK)
    gate = IOGate()
    server = serve(disk, gate=gate)
    control(disk, gate)
    stop = threading.Event()
    states = [{"sent": 0, "acked": 0} for _ in range(regions)]
    threads = [
        threading.Thread(target=writer, args=(server.port, r, blocks, states[r], stop))
        for r in range(regions)
    ]
    for t in threads:
        t.start()
    bounds = []
    for n in range(3):
        time.sleep(0.15)
        acked_before = [s["acked"] for s in states]
        reply = request(short_tmp, "snapshot-create", {"name": f"s{n}", "consistency": "crash"})
        sent_after = [s["sent"] for s in states]
        assert reply["snapshot"]["name"] == f"s{n}"
        assert reply["paused_ms"] < 1000
        bounds.append((acked_before, sent_after))
    stop.set()
    for t in threads:
        t.join(30)
    assert all(s["acked"] > 0 for s in states)
    for n, (acked_before, sent_after) in enumerate(bounds):
        data = disk.snapshots[f"s{n}"]["data"]
        for r in range(regions):
            k = written_prefix(data, r, blocks)
            assert acked_before[r] <= k <= sent_after[r], (n, r, acked_before, k, sent_after)
    for r in range(regions):  # and nothing acknowledged is missing from the live state
        assert written_prefix(bytes(disk.data), r, blocks) == states[r]["acked"]
    status = request(short_tmp, "status")
    assert status["pauses"] == 3 and status["last_snapshot"]["name"] == "s2"


def test_commands_and_their_errors(control, short_tmp):
    disk = MemDisk(MiB)
    srv = control(disk)
    assert request(short_tmp, "ping") == {}
    assert request(short_tmp, "flush")["flushed"] is True and disk.flushes == 1
    status = request(short_tmp, "status")
    assert status["pid"] == os.getpid() and status["size"] == MiB
    meta = {
        "name": "a",
        "description": "d",
        "consistency": "application",
        "report": {"writers": []},
        "artifacts": {"postgres": {"lsn": "0/1"}},
    }
    request(short_tmp, "snapshot-create", meta)
    assert disk.snapshots["a"]["artifacts"] == {"postgres": {"lsn": "0/1"}}
    assert disk.snapshots["a"]["consistency"] == "application"
    cases = [
        ("nope", {}, "CommandNotFound"),
        ("snapshot-create", {}, "BadRequest"),
        ("snapshot-create", {"name": "x", "consistency": "perfect"}, "BadRequest"),
        ("snapshot-create", {"name": "x", "colour": 1}, "BadRequest"),
        ("snapshot-create", {"name": "a"}, "SnapshotExists"),  # the engine's own refusal
        ("snapshot-revert", {"name": "a"}, "Refused"),
        ("snapshot-delete", {"name": "a"}, "Refused"),  # the live state reads through it
    ]
    for command, args, error_class in cases:
        with pytest.raises(Refused) as err:
            request(short_tmp, command, args)
        assert err.value.error_class == error_class, (command, err.value)
    assert "a" in disk.snapshots
    with socket.socket(socket.AF_UNIX) as sock:  # garbage lines get error replies
        sock.connect(str(srv.path))
        sock.sendall(b'not json\n[1]\n{"execute": "ping", "id": 9}\n')
        reader = sock.makefile("rb")
        replies = [json.loads(reader.readline()) for _ in range(3)]
    assert replies[0]["error"]["class"] == "BadRequest"
    assert replies[1]["error"]["class"] == "BadRequest"
    assert replies[2] == {"return": {}, "id": 9}
    assert oct(srv.path.stat().st_mode & 0o777) == "0o600"


def test_delete_of_a_snapshot_off_the_live_chain_is_done_under_pause(control, short_tmp):
    disk = MemDisk(MiB)
    control(disk)
    request(short_tmp, "snapshot-create", {"name": "a"})
    request(short_tmp, "snapshot-create", {"name": "b"})
    disk.current_parent = "a"  # as after a revert to 'a': 'b' is another branch now
    assert disk.live_chain() == {"(current)", "a"}
    assert request(short_tmp, "snapshot-delete", {"name": "b"})["deleted"] == "b"
    assert "b" not in disk.snapshots


def test_raw_file_has_no_snapshots(control, short_tmp):
    image = short_tmp / "raw.img"
    image.write_bytes(bytes(MiB))
    dev = RawFile(str(image))
    control(dev, folder=image)
    assert socket_path(image).name == ".raw.img.serve.sock"
    with pytest.raises(Refused) as err:
        request(image, "snapshot-create", {"name": "a"})
    assert err.value.error_class == "Unsupported"
    dev.close()


def test_unreachable_and_stale_sockets(short_tmp):
    with pytest.raises(Unreachable, match="no server is running"):
        request(short_tmp, "status", timeout=2)
    stale = socket.socket(socket.AF_UNIX)  # a socket file left by a killed server
    stale.bind(str(socket_path(short_tmp)))
    stale.close()
    with pytest.raises(Unreachable):
        request(short_tmp, "status", timeout=2)
    srv = ControlServer(short_tmp, MemDisk(4096), IOGate())
    srv.start()
    try:
        assert request(short_tmp, "ping") == {}
        with pytest.raises(ServeError, match="already serves"):
            ControlServer(short_tmp, MemDisk(4096), IOGate())
    finally:
        srv.shutdown()
    assert not socket_path(short_tmp).exists()


def test_a_disk_folder_with_a_long_path(short_tmp):
    deep = Path(short_tmp, *(["d" * 40] * 4))
    deep.mkdir(parents=True)
    assert len(str(socket_path(deep))) > 107
    srv = ControlServer(deep, MemDisk(4096), IOGate())
    srv.start()
    try:
        assert request(deep, "status")["disk"] == str(deep)
    finally:
        srv.shutdown()
    assert not socket_path(deep).exists()


def test_gated_device_counts_and_passes_through():
    disk = MemDisk(8192)
    dev = GatedDevice(disk, IOGate())
    dev.write(0, b"abc")
    dev.write_zeroes(1, 1)
    dev.flush()
    assert dev.read(0, 3) == b"a\x00c"
    assert dev.stats["bytes_written"] == 3 and dev.stats["flushes"] == 1 and dev.size == 8192
