"""The NBD server against real clients: qemu-io, qemu-img and nbdinfo, held to a byte array."""

from __future__ import annotations

import json
import random
import subprocess
import threading

import pytest

from host.serve import nbd_wire
from host.serve.device import RawFile
from host.serve.nbd import NBDConfigError, NBDServer, parse_hostport, resolve_bind
from tests.helpers.memdisk import MemDisk
from tests.helpers.nbdclient import Client

pytestmark = pytest.mark.qemu

MiB = 1024 * 1024


def qemu_io(uri: str, *commands: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    proc = subprocess.run([*args, uri], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "error" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    return proc


def test_random_writes_through_qemu_io_match_a_byte_array(serve, need_qemu, tmp_path):
    disk = MemDisk(16 * MiB)
    server = serve(disk)
    model = bytearray(disk.size)
    rng = random.Random(5)
    commands = []
    for _ in range(300):
        kind = rng.random()
        length = rng.choice([1, 511, 512, 4096, 65536, 100_000, rng.randrange(1, 300_000)])
        offset = rng.randrange(0, disk.size - length)
        if kind < 0.7:
            pattern = rng.randrange(1, 256)
            commands.append(f"write -P {pattern} {offset} {length}")
            model[offset : offset + length] = bytes([pattern]) * length
        elif kind < 0.85:
            commands.append(f"write -z {offset} {length}")
            model[offset : offset + length] = bytes(length)
        elif kind < 0.95:
            commands.append(f"aio_write -P 7 {offset} {length}")
            commands.append("aio_flush")
            model[offset : offset + length] = b"\x07" * length
        else:
            commands.append("flush")
    for start in range(0, len(commands), 100):  # several connections, one after the other
        qemu_io(server.uri, *commands[start : start + 100])
    assert disk.data == model
    out = tmp_path / "out.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri, str(out)],
        check=True,
        timeout=120,
    )
    assert out.read_bytes() == model
    # read back through the server with qemu-io's own checker
    checks = [f"read -P {model[o]} {o} 1" for o in rng.sample(range(disk.size), 50)]
    qemu_io(server.uri, *checks)


def test_qemu_img_convert_in_and_compare(serve, need_qemu, tmp_path):
    src = tmp_path / "src.raw"
    src.write_bytes(random.Random(1).randbytes(8 * MiB) + bytes(8 * MiB))
    target = tmp_path / "target.raw"
    target.write_bytes(bytes(16 * MiB))
    dev = RawFile(str(target))
    server = serve(dev)
    subprocess.run(
        ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), server.uri],
        check=True,
        timeout=120,
    )
    proc = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), server.uri],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert target.read_bytes() == src.read_bytes()
    dev.close()


def test_nbdinfo_sees_a_writable_export_with_flush_fua_and_a_map(serve, need_nbdinfo):
    server = serve(MemDisk(4 * MiB), name="disk", description="test disk")
    info = json.loads(
        subprocess.run(
            ["nbdinfo", "--json", server.uri],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    )
    export = info["exports"][0]
    assert export["export-size"] == 4 * MiB
    assert export["is_read_only"] is False
    assert export["can_flush"] and export["can_fua"] and export["can_zero"]
    assert export["can_multi_conn"] is True
    assert export["block_size_maximum"] == 32 * MiB
    assert "base:allocation" in export["contexts"]
    listing = subprocess.run(
        ["nbdinfo", "--list", server.uri], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    assert 'export="disk"' in listing
    mapping = subprocess.run(
        ["nbdinfo", "--map", server.uri], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    assert mapping.split()[:2] == ["0", str(4 * MiB)]


def test_read_only_export_refuses_writes_with_eperm(serve, need_qemu, need_nbdinfo):
    disk = MemDisk(1 * MiB)
    disk.data[:4] = b"keep"
    server = serve(disk, readonly=True)
    proc = qemu_io(server.uri, "write -P 1 0 4096", check=False)  # qemu sees READ_ONLY
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    client = Client(server.port).connect()  # a client that ignores the flag gets EPERM
    assert client.flags & nbd_wire.TF_READ_ONLY
    assert client.write(0, b"x" * 4096) == nbd_wire.EPERM
    client.request(nbd_wire.CMD_WRITE_ZEROES, 0, 4096)
    assert client.simple_reply()[0] == nbd_wire.EPERM
    assert client.read(0, 4) == (0, b"keep")
    client.disconnect()
    assert disk.data[:4] == b"keep"
    ro = subprocess.run(["nbdinfo", "--is", "read-only", server.uri], timeout=30)
    assert ro.returncode == 0
    subprocess.run(
        ["qemu-io", "-r", "-f", "raw", "-c", "read -P 0x6b 0 1", server.uri], check=True, timeout=30
    )  # 'k'


def test_several_clients_at_once_each_on_its_own_region(serve, need_qemu):
    disk = MemDisk(32 * MiB)
    server = serve(disk)
    errors: list[str] = []

    def client(i: int) -> None:
        base = i * 8 * MiB
        cmds = [f"write -P {i + 1} {base + k * 256 * 1024} 256k" for k in range(32)]
        cmds += [f"read -P {i + 1} {base} 8M"]
        proc = qemu_io(server.uri, *cmds, check=False)
        if proc.returncode != 0 or "error" in proc.stdout.lower():
            errors.append(proc.stdout + proc.stderr)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for i in range(4):
        assert disk.data[i * 8 * MiB : (i + 1) * 8 * MiB] == bytes([i + 1]) * 8 * MiB
    assert server.stats["connections"] == 4


def test_unaligned_size_is_served_whole(serve, need_qemu, tmp_path):
    disk = MemDisk(1 * MiB + 100)
    disk.data[-100:] = b"z" * 100
    server = serve(disk)
    qemu_io(server.uri, "read -P 0x7a 1048576 100")


def test_only_loopback_unless_allowed():
    with pytest.raises(NBDConfigError, match="not a loopback address"):
        NBDServer(MemDisk(4096), "0.0.0.0", 0)
    assert resolve_bind("0.0.0.0", 0, allow_remote=True)[1][0] == "0.0.0.0"
    assert resolve_bind("localhost", 0, allow_remote=False)[1][0] in ("127.0.0.1", "::1")
    assert parse_hostport("[::1]:10809") == ("::1", 10809)
    for bad in ("10809", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(NBDConfigError):
            parse_hostport(bad)


def test_port_in_use_is_a_clear_error(serve):
    server = serve(MemDisk(4096))
    with pytest.raises(NBDConfigError, match="cannot listen"):
        NBDServer(MemDisk(4096), "127.0.0.1", server.port)
