"""The host's client of the agent protocol: one connection, every wait bounded.

An endpoint is ``unix:PATH`` (a local agent, or a QEMU chardev socket that leads to a guest's
virtio-serial port) or ``vsock:CID:PORT``. Requests carry an id of their own and replies with
another id are skipped, so stale lines left in a virtio-serial pipe by an earlier client do
not answer for us.

Nothing here waits on the guest without a bound: connecting is bounded by ``connect_timeout``,
each reply by the timeout its call passes (``freeze`` by the freeze budget the host asked for
plus a small margin, which is always less than the agent's ceiling plus that margin). The host
never depends on the guest answering to stop waiting (oVirt vdsm #160).

Errors (``code`` is stable; ``exit_code`` for the CLI)::

    QuiesceHostError            exit 2
     ├── EndpointError          ENDPOINT is not unix:PATH or vsock:CID:PORT
     ├── AgentUnreachable       exit 7: no connection, or the connection was lost mid-call
     │    └── AgentTimeout      no reply within the bound
     ├── AgentGarbage           exit 8: the reply is not the agent protocol
     └── AgentRefused           exit 9: the agent answered with an error; ``error_class``,
                                ``desc`` and ``report`` (the cycle's report, when it sent one)
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from agent import protocol
from common.errors import QuiesceError

CONNECT_TIMEOUT = 5.0  # seconds to connect (and for ping/status replies)
REPLY_MARGIN = 2.0  # seconds on top of the agent's own bound, for transit and scheduling
MAX_REPLY = 4 * 1024 * 1024  # a report with backup_label texts and messages stays far below
MAX_CEILING = 60.0  # the protocol's ceiling: no agent holds longer


class QuiesceHostError(QuiesceError):
    """Root of the host-side quiesce errors."""

    code = "QuiesceHostError"
    exit_code = 2


class EndpointError(QuiesceHostError):
    code = "EndpointError"


class AgentUnreachable(QuiesceHostError):
    code = "AgentUnreachable"
    exit_code = 7


class AgentTimeout(AgentUnreachable):
    code = "AgentTimeout"


class AgentGarbage(QuiesceHostError):
    code = "AgentGarbage"
    exit_code = 8


class AgentRefused(QuiesceHostError):
    """The agent answered with an error reply."""

    code = "AgentRefused"
    exit_code = 9

    def __init__(
        self, command: str, error_class: str, desc: str, data: dict[str, Any] | None
    ) -> None:
        super().__init__(f"the agent refused {command!r}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc
        self.data = data or {}

    @property
    def report(self) -> dict[str, Any] | None:
        report = self.data.get("report")
        return report if isinstance(report, dict) else None


@dataclass(frozen=True)
class Endpoint:
    """Where the agent listens: ``unix`` with ``path``, or ``vsock`` with ``cid`` and ``port``."""

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
        f"unix:{protocol.DEFAULT_SOCKET}) or vsock:CID:PORT"
    )


def _unix_address(path: str) -> tuple[str, int | None]:
    """A connectable address for ``path``; via /proc/self/fd when it is too long for sun_path."""
    if len(os.fsencode(path)) < 100:
        return path, None
    dirfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{dirfd}/{os.path.basename(path)}", dirfd


class AgentClient:
    """One connection to an agent. Use as a context manager; every call takes a bound."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: Endpoint | str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.endpoint = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._tag = f"h{os.getpid()}-{time.monotonic_ns() % 1_000_000}"

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> AgentClient:
        """Connect within ``connect_timeout``. Raises AgentUnreachable with what to check."""
        ep = self.endpoint
        try:
            if ep.kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                addr, dirfd = _unix_address(ep.path)
                try:
                    sock.settimeout(self.connect_timeout)
                    sock.connect(addr)
                finally:
                    if dirfd is not None:
                        os.close(dirfd)
            else:
                sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                sock.connect((ep.cid, ep.port))
        except TimeoutError as err:
            raise AgentTimeout(
                f"{ep}: no connection within {self.connect_timeout:g} s; is the "
                "guest up and quiesce-agent listening there?"
            ) from err
        except OSError as err:
            hint = (
                "is quiesce-agent running (systemctl status quiesce-agent), and is this its socket?"
                if ep.kind == "unix"
                else "is the guest running with a vsock device, and the agent listening on "
                "that port (listen.vsock.port)?"
            )
            raise AgentUnreachable(f"{ep}: cannot connect: {err.strerror or err}; {hint}") from err
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> AgentClient:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------
    def call(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        timeout: float = CONNECT_TIMEOUT,
    ) -> Any:
        """Send one request; its ``return`` value within ``timeout`` seconds.

        Raises AgentTimeout, AgentUnreachable (connection lost), AgentGarbage, AgentRefused.
        """
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        rid = f"{self._tag}-{next(self._ids)}"
        deadline = time.monotonic() + timeout
        try:
            self._sock.settimeout(max(0.01, timeout))
            self._sock.sendall(protocol.request(command, arguments, rid))
            while True:
                reply = self._reply(command, deadline, timeout)
                if reply.get("id") in (rid, None):
                    break
        except TimeoutError as err:
            raise AgentTimeout(
                f"{self.endpoint}: no reply to {command!r} within {timeout:.1f} s; stopped waiting"
            ) from err
        except OSError as err:
            raise AgentUnreachable(
                f"{self.endpoint}: the connection was lost during "
                f"{command!r} ({err.strerror or err}); did the agent "
                "die? (journalctl -u quiesce-agent)"
            ) from err
        if "error" in reply:
            failure = reply["error"]
            data = failure.get("data") if isinstance(failure.get("data"), dict) else None
            raise AgentRefused(command, failure["class"], str(failure.get("desc", "")), data)
        return reply["return"]

    def _reply(self, command: str, deadline: float, timeout: float) -> dict[str, Any]:
        """The next reply line, parsed. Raises TimeoutError, OSError, AgentGarbage."""
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(0, "the agent closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY:
                raise AgentGarbage(
                    f"{self.endpoint}: a reply to {command!r} longer than "
                    f"{MAX_REPLY} bytes; is this really quiesce-agent?"
                )
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        try:
            return protocol.parse_reply(line)
        except protocol.ProtocolError as err:
            shown = line[:80].decode("utf-8", "replace")
            raise AgentGarbage(
                f"{self.endpoint}: the reply to {command!r} is not the agent "
                f"protocol ({err.desc}): {shown!r}; is this endpoint "
                "quiesce-agent?"
            ) from err

    # -- the commands ----------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return _mapping(self.call("ping"), "ping")

    def status(self) -> dict[str, Any]:
        return _mapping(self.call("status"), "status")

    def freeze(self, label: str, budget: float) -> dict[str, Any]:
        """Ask for a freeze with a budget of ``budget`` seconds; the report once all hold.

        Waits at most ``budget`` + REPLY_MARGIN. Raises AgentRefused (the freeze failed and was
        rolled back: ``report`` says which writer and why), AgentTimeout, AgentUnreachable.
        """
        args = {"label": label, "timeout": round(budget, 3)}
        return _mapping(self.call("freeze", args, budget + REPLY_MARGIN), "freeze")

    def thaw(self, timeout: float) -> dict[str, Any]:
        """Release everything; the final report. NotConsistent comes as AgentRefused."""
        return _mapping(self.call("thaw", timeout=timeout), "thaw")

    def abort(self, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
        """Undo a freeze with freezeFail semantics (the snapshot failed)."""
        return _mapping(self.call("abort", timeout=timeout), "abort")


def _mapping(value: Any, command: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AgentGarbage(f"the reply to {command!r} is not an object: {json.dumps(value)[:80]}")
    return value


def ceiling_of(status: dict[str, Any]) -> float:
    """The agent's ceiling in seconds from a ``status`` reply, never more than 60."""
    value = status.get("ceiling_seconds")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return min(float(value), MAX_CEILING)
    return MAX_CEILING
