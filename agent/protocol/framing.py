"""The one line framing: every reader of this protocol feeds its bytes to a ``LineBuffer``.

``recv_line`` reads lines from a socket by a deadline (the client, the control server),
``read_lines`` from an asyncio stream (the agent's server).
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

from agent.protocol.errors import LINE_TOO_LONG, ProtocolError
from agent.protocol.wire import MAX_LINE

if TYPE_CHECKING:
    from asyncio import StreamReader


class LineBuffer:
    """Bytes in, whole lines out; a partial line longer than ``limit`` is a LineTooLong."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes (without their newline); blank lines are dropped.

        Raises ProtocolError (LineTooLong) when a line, whole or not, passes the limit; what
        was buffered is dropped then."""
        self._buf += data
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        if len(self._buf) > self.limit or any(len(line) > self.limit for line in lines):
            self._buf.clear()
            raise ProtocolError(LINE_TOO_LONG, f"line longer than {self.limit} bytes")
        return [bytes(line) for line in lines if line.strip()]

    def take_rest(self) -> bytes:
        """What is left of an unfinished line (a peer that closed without a newline)."""
        rest, self._buf = bytes(self._buf), bytearray()
        return rest


def recv_line(sock: socket.socket, lines: LineBuffer, pending: list[bytes], until: float) -> bytes:
    """The next line from ``sock`` by ``until`` (time.monotonic()).

    Raises TimeoutError, ConnectionResetError (the peer closed), ProtocolError (too long).
    """
    while not pending:
        left = until - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError(0, "the other end closed the connection")
        pending.extend(lines.feed(chunk))
    return pending.pop(0)


async def read_lines(reader: StreamReader, lines: LineBuffer) -> list[bytes] | None:
    """The lines of the next chunk from an asyncio stream; None at EOF (any unfinished line
    is then returned last). Raises ProtocolError (too long)."""
    chunk = await reader.read(65536)
    if not chunk:
        rest = lines.take_rest()
        return [rest] if rest.strip() else None
    return lines.feed(chunk)
