"""A small, deliberately permissive NBD client for tests: it sends whatever it is told to."""

from __future__ import annotations

import socket
import struct

from host.serve import nbd_wire


class Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.cookie = 0
        self.size = 0
        self.flags = 0
        self.structured = False

    def close(self) -> None:
        self.sock.close()

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def greeting(
        self, client_flags: int = nbd_wire.FLAG_FIXED_NEWSTYLE | nbd_wire.FLAG_NO_ZEROES
    ) -> int:
        magic, opt_magic, flags = struct.unpack(">QQH", self.recv_exact(18))
        assert (magic, opt_magic) == (nbd_wire.NBDMAGIC, nbd_wire.IHAVEOPT)
        self.sock.sendall(struct.pack(">I", client_flags))
        return flags

    def option(self, opt: int, data: bytes = b"", magic: int = nbd_wire.IHAVEOPT) -> None:
        self.sock.sendall(struct.pack(">QII", magic, opt, len(data)) + data)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        assert magic == nbd_wire.REPLY_MAGIC
        return opt, rtype, self.recv_exact(length)

    def replies_until_final(self) -> list[tuple[int, bytes]]:
        out = []
        while True:
            _, rtype, data = self.option_reply()
            out.append((rtype, data))
            if rtype == nbd_wire.REP_ACK or rtype & 0x80000000:
                return out

    def go(self, name: bytes = b"", infos: tuple[int, ...] = ()) -> list[tuple[int, bytes]]:
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
        data += b"".join(struct.pack(">H", i) for i in infos)
        self.option(nbd_wire.OPT_GO, data)
        replies = self.replies_until_final()
        for rtype, body in replies:
            if (
                rtype == nbd_wire.REP_INFO
                and struct.unpack(">H", body[:2])[0] == nbd_wire.INFO_EXPORT
            ):
                _, self.size, self.flags = struct.unpack(">HQH", body)
        return replies

    def connect(self) -> Client:
        self.greeting()
        replies = self.go()
        assert replies[-1][0] == nbd_wire.REP_ACK, replies
        return self

    def request(
        self,
        cmd: int,
        offset: int = 0,
        length: int = 0,
        data: bytes = b"",
        flags: int = 0,
        magic: int = nbd_wire.REQUEST_MAGIC,
    ) -> int:
        self.cookie += 1
        self.sock.sendall(
            struct.pack(">IHHQQI", magic, flags, cmd, self.cookie, offset, length) + data
        )
        return self.cookie

    def simple_reply(self, length: int = 0) -> tuple[int, bytes]:
        magic, err, cookie = struct.unpack(">IIQ", self.recv_exact(16))
        assert magic == nbd_wire.SIMPLE_REPLY_MAGIC, hex(magic)
        assert cookie == self.cookie
        return err, (self.recv_exact(length) if err == 0 and length else b"")

    def read(self, offset: int, length: int, flags: int = 0) -> tuple[int, bytes]:
        self.request(nbd_wire.CMD_READ, offset, length, flags=flags)
        return self.simple_reply(length)

    def write(self, offset: int, data: bytes, flags: int = 0) -> int:
        self.request(nbd_wire.CMD_WRITE, offset, len(data), data, flags=flags)
        return self.simple_reply()[0]

    def flush(self) -> int:
        self.request(nbd_wire.CMD_FLUSH)
        return self.simple_reply()[0]

    def disconnect(self) -> None:
        self.request(nbd_wire.CMD_DISC)
        self.close()
