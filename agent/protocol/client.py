"""The one client of the protocol: one connection, every wait bounded, replies matched by id.

An endpoint is ``unix:PATH`` (a local agent, a QEMU chardev socket that leads to a guest's
virtio-serial port, or a served disk's control socket) or ``vsock:CID:PORT``. Requests carry
an id of their own and replies with another id are skipped, so a stale line left in a
virtio-serial pipe by an earlier client never answers for us. Nothing waits without a bound:
connecting by ``connect_timeout``, each reply by the timeout its call passes. The host never
depends on the other end answering to stop waiting (oVirt vdsm #160).

Raises Unreachable, NoReply, Garbage, Refused, EndpointError.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from agent.protocol.errors import (
    EndpointError,
    Garbage,
    NoReply,
    ProtocolError,
    Refused,
    Unreachable,
)
from agent.protocol.framing import LineBuffer, recv_line
from agent.protocol.records import Report, Status
from agent.protocol.wire import (
    CONNECT_TIMEOUT,
    DEFAULT_SOCKET,
    MAX_CEILING,
    MAX_REPLY,
    parse_reply,
    request,
)


@dataclass(frozen=True)
class Endpoint:
    """Where the other end listens: ``unix`` with ``path``, or ``vsock`` with ``cid``/``port``."""

    kind: str
    path: str = ""
    cid: int = 0
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"vsock:{self.cid}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``unix:PATH`` or ``vsock:CID:PORT``. Raises EndpointError naming what is wrong."""
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return Endpoint("unix", path=os.path.abspath(rest))
    if kind == "vsock":
        cid, _, port = rest.partition(":")
        if cid.isdigit() and port.isdigit() and 0 < int(port) <= 0xFFFFFFFF:
            return Endpoint("vsock", cid=int(cid), port=int(port))
        raise EndpointError(
            f"{text!r}: a vsock endpoint is vsock:CID:PORT with numbers, "
            "e.g. vsock:3:5000 (CID 2 is the host, guests start at 3)"
        )
    raise EndpointError(
        f"{text!r}: the agent endpoint must be unix:PATH (e.g. "
        f"unix:{DEFAULT_SOCKET}) or vsock:CID:PORT"
    )


def _connect(ep: Endpoint, timeout: float) -> socket.socket:
    """A connected socket; a unix path too long for sun_path goes through /proc/self/fd."""
    if ep.kind == "vsock":
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        addr: Any = (ep.cid, ep.port)
        dirfd = None
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr, dirfd = ep.path, None
        if len(os.fsencode(ep.path)) >= 100:
            dirfd = os.open(os.path.dirname(ep.path), os.O_PATH | os.O_DIRECTORY)
            addr = f"/proc/self/fd/{dirfd}/{os.path.basename(ep.path)}"
    try:
        sock.settimeout(timeout)
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    finally:
        if dirfd is not None:
            os.close(dirfd)
    return sock


# -- the client ------------------------------------------------------------------------------
AGENT_HINTS = {
    "unix": "is quiesce-agent running (systemctl status quiesce-agent), and is this its socket?",
    "vsock": "is the guest running with a vsock device, and the agent listening on that port "
    "(listen.vsock.port)?",
    "lost": "did the agent die? (journalctl -u quiesce-agent)",
    "peer": "the agent",
    "garbage": "is this endpoint quiesce-agent?",
}


class Client:
    """One connection to an agent (or another server of this protocol); every call bounded.

    ``hints`` say what to check when the other end cannot be reached ("unix", "vsock") or
    goes away mid-call ("lost"); ``max_reply`` bounds a reply line.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        endpoint: Endpoint | str,
        connect_timeout: float = CONNECT_TIMEOUT,
        *,
        hints: dict[str, str] | None = None,
        max_reply: int = MAX_REPLY,
    ) -> None:
        self.endpoint = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
        self.connect_timeout = connect_timeout
        self.hints = hints or AGENT_HINTS
        self.max_reply = max_reply
        self._sock: socket.socket | None = None
        self._lines = LineBuffer(max_reply)
        self._pending: list[bytes] = []
        self._tag = f"h{os.getpid()}-{time.monotonic_ns() % 1_000_000}"

    def connect(self) -> Client:
        """Connect within ``connect_timeout``. Raises Unreachable with what to check."""
        ep = self.endpoint
        try:
            self._sock = _connect(ep, self.connect_timeout)
        except TimeoutError as err:
            raise NoReply(
                f"{ep}: no connection within {self.connect_timeout:g} s; "
                f"{self.hints.get(ep.kind, '')}"
            ) from err
        except OSError as err:
            peer, hint = self.hints.get("peer", "the agent"), self.hints.get(ep.kind, "")
            raise Unreachable(
                f"{ep}: cannot connect to {peer}: {err.strerror or err}; {hint}"
            ) from err
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        timeout: float = CONNECT_TIMEOUT,
    ) -> Any:
        """Send one request; its ``return`` value within ``timeout`` seconds.

        Raises NoReply, Unreachable (connection lost), Garbage, Refused.
        """
        sock = self._sock or self.connect()._sock
        assert sock is not None
        rid = f"{self._tag}-{next(self._ids)}"
        until = time.monotonic() + timeout
        try:
            sock.settimeout(max(0.01, timeout))
            sock.sendall(request(command, arguments, rid))
            reply = self._reply(sock, command, rid, until)
        except TimeoutError as err:
            raise NoReply(
                f"{self.endpoint}: no reply to {command!r} within {timeout:.1f} s; stopped waiting"
            ) from err
        except OSError as err:
            raise Unreachable(
                f"{self.endpoint}: the connection was lost during {command!r} "
                f"({err.strerror or err}); {self.hints.get('lost', '')}"
            ) from err
        if "error" in reply:
            e = reply["error"]
            data = e.get("data") if isinstance(e.get("data"), dict) else {}
            peer = self.hints.get("peer", "the agent")
            raise Refused(command, e["class"], str(e.get("desc", "")), data, peer)
        return reply["return"]

    def sync_delimited(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Get in step with a qemu-ga (``guest-sync-delimited``), as its docs ask on every new
        connection and after a timeout: a 0xFF byte first, so that qemu-ga drops what an
        earlier client left half sent; a random id; qemu-ga puts a 0xFF before its reply,
        so every line is read up to its last 0xFF, and lines without one, or a sync reply
        with another id (an earlier client's), are skipped. Raises NoReply, Unreachable."""
        sock = self._sock or self.connect()._sock
        assert sock is not None
        nonce = secrets.randbelow(2**31 - 2) + 1
        until = time.monotonic() + timeout
        self._pending.clear()
        self._lines.take_rest()  # whatever was on its way is stale now
        try:
            sock.sendall(b"\xff" + request("guest-sync-delimited", {"id": nonce}))
            while True:
                try:
                    line = recv_line(sock, self._lines, self._pending, until)
                except ProtocolError:
                    continue  # an earlier client's line too long: dropped, read on
                if self._is_sync_reply(line, nonce):
                    break
        except TimeoutError as err:
            raise NoReply(
                f"{self.endpoint}: no reply to 'guest-sync-delimited' within {timeout:.1f} s; "
                f"{self.hints.get('garbage', '')}"
            ) from err
        except OSError as err:
            raise Unreachable(
                f"{self.endpoint}: the connection was lost while getting in step "
                f"({err.strerror or err}); {self.hints.get('lost', '')}"
            ) from err

    @staticmethod
    def _is_sync_reply(line: bytes, nonce: int) -> bool:
        _, mark, rest = line.rpartition(b"\xff")
        if not mark:
            return False  # no delimiter: not the reply to this sync
        try:
            return parse_reply(rest).get("return") == nonce
        except ProtocolError:
            return False

    def _reply(self, sock: socket.socket, command: str, rid: str, until: float) -> dict[str, Any]:
        """The reply with our id (or none: an error for a line that did not parse)."""
        while True:
            line = b""
            try:
                line = recv_line(sock, self._lines, self._pending, until)
                reply = parse_reply(line)
            except ProtocolError as err:
                shown = line[:80].decode("utf-8", "replace")
                raise Garbage(
                    f"{self.endpoint}: the reply to {command!r} is not this protocol "
                    f"({err.desc}): {shown!r}; {self.hints.get('garbage', '')}"
                ) from err
            if reply.get("id") in (rid, None):
                return reply

    # the agent's commands, typed ---------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return _mapping(self.call("ping"), "ping")

    def status(self) -> Status:
        return _mapping(self.call("status"), "status")  # type: ignore[return-value]

    def freeze(
        self, label: str, budget: float, margin: float = 2.0, *, bound: bool = True
    ) -> Report:
        """Freeze with a budget of ``budget`` seconds; waits at most ``budget + margin``.

        ``bound`` (the default): the agent holds the freeze only while this connection
        lives; closing it (or dying) before ``thaw`` undoes the freeze at once. Send the
        thaw or abort with this same client (a QEMU chardev serves one host at a time)."""
        args: dict[str, Any] = {"label": label, "timeout": round(budget, 3)}
        if bound:
            args["bound"] = True
        return _mapping(self.call("freeze", args, budget + margin), "freeze")  # type: ignore[return-value]

    def thaw(self, timeout: float) -> Report:
        """Release everything; the final report. NotConsistent comes as Refused."""
        return _mapping(self.call("thaw", timeout=timeout), "thaw")  # type: ignore[return-value]

    def abort(self, timeout: float = CONNECT_TIMEOUT) -> Report:
        """Undo a freeze with freezeFail semantics (the snapshot failed)."""
        return _mapping(self.call("abort", timeout=timeout), "abort")  # type: ignore[return-value]


def ceiling_of(status: Status) -> float:
    """The agent's ceiling in seconds from a ``status`` reply, never more than 60."""
    value: object = status.get("ceiling_seconds")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return min(float(value), MAX_CEILING)
    return MAX_CEILING


def _mapping(value: Any, command: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        shown = json.dumps(value)[:80]
        raise Garbage(f"the reply to {command!r} is not an object: {shown}")
    return value
