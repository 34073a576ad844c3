"""A small synchronous client of the agent protocol (the CLI and scripts use it)."""

from __future__ import annotations

import socket
import time
from typing import Any

from agent import protocol
from agent.errors import AgentUnreachable


class Client:
    """One connection to the daemon's Unix socket."""

    def __init__(self, path: str, timeout: float = 90.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as err:
            self.sock.close()
            raise AgentUnreachable(
                f"cannot connect to the agent at {path}: {err.strerror or err}; "
                "is quiesce-agent running (systemctl status quiesce-agent)?"
            ) from err
        self.buf = b""
        self.next_id = 1

    def call(self, execute: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request, return the whole reply object ({"return": ...} or {"error": ...})."""
        rid = self.next_id
        self.next_id += 1
        try:
            self.sock.sendall(protocol.request(execute, arguments, rid))
            return protocol.parse_reply(self._line())
        except TimeoutError as err:
            raise AgentUnreachable(
                f"the agent did not answer '{execute}' within {self.timeout:g} s"
            ) from err
        except OSError as err:
            raise AgentUnreachable(
                f"lost the connection to the agent during '{execute}': {err}"
            ) from err
        except protocol.ProtocolError as err:
            raise AgentUnreachable(
                f"the agent answered garbage to '{execute}': {err.desc}"
            ) from err

    def _line(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("connection closed by the agent")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
