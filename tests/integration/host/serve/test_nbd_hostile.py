"""Hostile and broken clients get protocol errors or a hang-up, and the server lives on."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

from host.serve import nbd_wire
from tests.helpers.memdisk import MemDisk
from tests.helpers.nbdclient import Client

MiB = 1024 * 1024


@pytest.fixture
def server(serve):
    disk = MemDisk(4 * MiB)
    srv = serve(disk, name="disk")
    srv.disk = disk
    return srv


def still_serves(server) -> None:
    client = Client(server.port).connect()
    assert client.write(0, b"alive") == 0
    assert client.read(0, 5) == (0, b"alive")
    client.disconnect()


def closed(client: Client) -> bool:
    try:
        return client.sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return True


def test_unknown_options_get_err_unsup_and_negotiation_goes_on(server):
    client = Client(server.port)
    client.greeting()
    for opt in (0, 4, 5, 11, 99, 0xFFFFFFFF):
        client.option(opt, b"some data")
        o, rtype, _ = client.option_reply()
        assert (o, rtype) == (opt, nbd_wire.REP_ERR_UNSUP)
    client.option(nbd_wire.OPT_LIST, b"junk")
    assert client.option_reply()[1] == nbd_wire.REP_ERR_INVALID
    client.option(nbd_wire.OPT_GO, b"\x00\x00")  # truncated
    assert client.option_reply()[1] == nbd_wire.REP_ERR_INVALID
    client.option(nbd_wire.OPT_GO, struct.pack(">I", 1000) + b"ab\x00\x00")  # name past the end
    assert client.option_reply()[1] == nbd_wire.REP_ERR_INVALID
    client.option(nbd_wire.OPT_SET_META_CONTEXT, b"\x00" * 8)  # before STRUCTURED_REPLY
    assert client.option_reply()[1] == nbd_wire.REP_ERR_INVALID
    client.option(nbd_wire.OPT_LIST_META_CONTEXT, b"\xff" * 12)
    assert client.option_reply()[1] == nbd_wire.REP_ERR_INVALID
    assert client.go(b"no-such-export")[-1][0] == nbd_wire.REP_ERR_UNKNOWN
    client.option(nbd_wire.OPT_INFO, struct.pack(">I", 4) + b"disk" + struct.pack(">HH", 1, 3))
    replies = client.replies_until_final()
    assert replies[-1][0] == nbd_wire.REP_ACK
    assert any(r == nbd_wire.REP_INFO and d[:2] == b"\x00\x03" for r, d in replies)
    assert client.go(b"disk")[-1][0] == nbd_wire.REP_ACK
    assert client.write(0, b"ok") == 0
    client.disconnect()
    still_serves(server)


def test_oversize_option_data_is_refused_without_reading_forever(server):
    client = Client(server.port)
    client.greeting()
    client.sock.sendall(
        struct.pack(">QII", nbd_wire.IHAVEOPT, nbd_wire.OPT_LIST, 100_000) + bytes(100_000)
    )
    assert client.option_reply()[1] == nbd_wire.REP_ERR_TOO_BIG
    client.option(nbd_wire.OPT_ABORT)
    assert client.option_reply()[1] == nbd_wire.REP_ACK
    assert closed(client)
    still_serves(server)


@pytest.mark.parametrize("breakage", ["option magic", "client flags", "export name", "garbage"])
def test_broken_negotiation_hangs_up_on_that_client_only(server, breakage):
    client = Client(server.port)
    if breakage == "client flags":
        client.greeting(client_flags=0x80)
    else:
        client.greeting()
        if breakage == "option magic":
            client.option(nbd_wire.OPT_LIST, magic=0x1234)
        elif breakage == "export name":
            client.option(nbd_wire.OPT_EXPORT_NAME, b"nope")
        else:
            client.sock.sendall(random.Random(3).randbytes(5000))
    assert closed(client)
    still_serves(server)


def test_export_name_option_enters_transmission(server):
    client = Client(server.port)
    client.greeting(client_flags=nbd_wire.FLAG_FIXED_NEWSTYLE)  # wants the 124 zero bytes
    client.option(nbd_wire.OPT_EXPORT_NAME, b"disk")
    size, flags = struct.unpack(">QH", client.recv_exact(10))
    assert size == 4 * MiB and flags & nbd_wire.TF_SEND_FLUSH
    assert client.recv_exact(124) == bytes(124)
    assert client.write(10, b"x") == 0 and client.flush() == 0
    client.disconnect()


def test_out_of_bounds_and_unknown_requests_get_the_right_errors(server):
    client = Client(server.port).connect()
    size = client.size
    assert client.read(size - 10, 11)[0] == nbd_wire.EINVAL
    assert client.read(2**63, 1)[0] == nbd_wire.EINVAL
    assert client.write(size - 1, b"ab") == nbd_wire.ENOSPC
    client.request(nbd_wire.CMD_WRITE_ZEROES, size, 1)
    assert client.simple_reply()[0] == nbd_wire.ENOSPC
    client.request(nbd_wire.CMD_TRIM, size - 1, 2)
    assert client.simple_reply()[0] == nbd_wire.EINVAL
    client.request(99, 0, 0)
    assert client.simple_reply()[0] == nbd_wire.EINVAL
    client.request(nbd_wire.CMD_READ, 0, 1, flags=0x80)  # unknown flag
    assert client.simple_reply()[0] == nbd_wire.EINVAL
    client.request(nbd_wire.CMD_BLOCK_STATUS, 0, 4096)  # no meta context negotiated
    assert client.simple_reply()[0] == nbd_wire.EINVAL
    client.request(nbd_wire.CMD_FLUSH, 1, 1)
    assert client.simple_reply()[0] == nbd_wire.EINVAL
    assert client.read(0, nbd_wire.MAX_PAYLOAD + 1)[0] == nbd_wire.EINVAL
    # an oversize write: its payload is skipped, EINVAL, and the connection stays in step
    client.request(nbd_wire.CMD_WRITE, 0, nbd_wire.MAX_PAYLOAD + 1, bytes(nbd_wire.MAX_PAYLOAD + 1))
    assert client.simple_reply()[0] == nbd_wire.EINVAL
    assert client.write(size - 2, b"ok", flags=nbd_wire.CMD_FLAG_FUA) == 0
    assert client.read(size - 2, 2) == (0, b"ok")
    assert server.disk.data[-2:] == b"ok"
    client.disconnect()
    still_serves(server)


def test_absurd_write_length_hangs_up(server):
    client = Client(server.port).connect()
    client.request(nbd_wire.CMD_WRITE, 0, 0xFFFFFFFF)
    assert closed(client)
    still_serves(server)


def test_bad_request_magic_hangs_up(server):
    client = Client(server.port).connect()
    client.request(nbd_wire.CMD_READ, 0, 512, magic=0xDEADBEEF)
    assert closed(client)
    still_serves(server)


def test_structured_replies_and_block_status(server):
    client = Client(server.port)
    client.greeting()
    client.option(nbd_wire.OPT_STRUCTURED_REPLY)
    assert client.option_reply()[1] == nbd_wire.REP_ACK
    query = b"base:allocation"
    data = struct.pack(">I", 4) + b"disk" + struct.pack(">II", 1, len(query)) + query
    client.option(nbd_wire.OPT_SET_META_CONTEXT, data)
    replies = client.replies_until_final()
    assert replies[0][0] == nbd_wire.REP_META_CONTEXT and replies[0][1][4:] == query
    assert client.go(b"disk")[-1][0] == nbd_wire.REP_ACK
    assert client.flags & nbd_wire.TF_SEND_DF
    client.request(nbd_wire.CMD_READ, 8, 4)
    magic, flags, ctype, _cookie, length = struct.unpack(">IHHQI", client.recv_exact(20))
    assert (magic, flags, ctype, length) == (
        nbd_wire.STRUCTURED_REPLY_MAGIC,
        nbd_wire.CHUNK_DONE,
        nbd_wire.CHUNK_OFFSET_DATA,
        12,
    )
    assert struct.unpack(">Q", client.recv_exact(8))[0] == 8
    client.recv_exact(4)
    client.request(nbd_wire.CMD_READ, client.size, 1)  # error as a structured chunk
    _m, _f, ctype, _c, length = struct.unpack(">IHHQI", client.recv_exact(20))
    assert ctype == nbd_wire.CHUNK_ERROR
    assert struct.unpack(">I", client.recv_exact(length)[:4])[0] == nbd_wire.EINVAL
    client.request(nbd_wire.CMD_BLOCK_STATUS, 0, 65536, flags=nbd_wire.CMD_FLAG_REQ_ONE)
    _m, _f, ctype, _c, length = struct.unpack(">IHHQI", client.recv_exact(20))
    assert ctype == nbd_wire.CHUNK_BLOCK_STATUS
    ctx, extent, eflags = struct.unpack(">III", client.recv_exact(length))
    assert (ctx, extent, eflags) == (nbd_wire.META_ID_ALLOCATION, 65536, 0)
    client.disconnect()


def test_connection_limit_refuses_extra_clients(serve):
    srv = serve(MemDisk(MiB), max_connections=2)
    held = [Client(srv.port).connect() for _ in range(2)]
    extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    assert extra.recv(1) == b""
    extra.close()
    held[0].disconnect()
    for _ in range(50):
        if srv.active_connections < 2:
            break
        time.sleep(0.02)
    still_serves(srv)
    held[1].disconnect()


def test_client_vanishing_mid_request_is_harmless(server):
    client = Client(server.port).connect()
    client.sock.sendall(
        struct.pack(">IHHQQI", nbd_wire.REQUEST_MAGIC, 0, nbd_wire.CMD_WRITE, 1, 0, 4096)
        + b"x" * 100
    )
    client.close()
    still_serves(server)
    assert server.disk.data[:5] == b"alive"
