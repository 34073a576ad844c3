"""An NBD server that exposes block devices (a disk's current state, or each disk of a VM as
an export of its own, by name) to NBD clients.

Fixed newstyle negotiation (EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
LIST_/SET_META_CONTEXT with ``base:allocation``; every other option gets ERR_UNSUP and the
negotiation goes on), then READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS and DISC.
Bounds and flags are checked with the errors the protocol names (EINVAL, ENOSPC, EPERM).

One thread per connection, requests handled in order on it. The device API is synchronous
(file I/O, an flock-holding engine), so asyncio would only add a hop to a thread for every
request; a connection thread keeps the code straight and the GIL is released during I/O.
Several connections at once are fine: the device serialises its writers itself (see
``host.serve.device.GatedDevice``), and a FLUSH on one connection flushes the whole device,
so CAN_MULTI_CONN is advertised truthfully.

The server binds loopback by default and refuses any other address unless ``allow_remote``.

Raises: ``NBDConfigError`` (bad or non-loopback address) from the constructor; nothing a
client sends raises out of the server: a protocol violation closes that connection only.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Mapping

from common.errors import QuiesceError
from host.serve.device import BlockDevice
from host.serve.nbd_connection import _Connection, _Hangup

logger = logging.getLogger(__name__)


class NBDConfigError(QuiesceError):
    """The server cannot start as asked (address refused, port taken)."""

    code = "NBDConfigError"
    exit_code = 2


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port). Raises NBDConfigError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise NBDConfigError(f"--nbd {text!r}: expected HOST:PORT, e.g. 127.0.0.1:10809")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise NBDConfigError(f"--nbd {text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise NBDConfigError(f"--nbd {text!r}: port {number} is out of range 0..65535")
    return host, number


def resolve_bind(host: str, port: int, allow_remote: bool) -> tuple[int, tuple[str, int]]:
    """The address family and sockaddr to bind. Non-loopback is refused unless allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise NBDConfigError(f"cannot resolve NBD address {host!r}: {err}") from err
    family, _, _, _, sockaddr = infos[0]
    addr = ipaddress.ip_address(sockaddr[0])
    if not addr.is_loopback and not allow_remote:
        raise NBDConfigError(
            f"refusing to serve NBD on {sockaddr[0]}: not a loopback address; NBD has no "
            "authentication, so anyone who reaches the port can write the disk. Use 127.0.0.1, "
            "or pass --allow-remote if you really mean it"
        )
    return int(family), (str(sockaddr[0]), int(sockaddr[1]))


class NBDServer:
    """Serves ``device`` to any number of NBD clients; ``start()`` returns once listening.

    ``device`` is one device, the export ``name`` (the empty name reaches it too), or a
    mapping of export names to devices (a VM's disks): each client names the one it wants,
    ``LIST`` names them all, and the empty name is refused with the list of names.
    """

    def __init__(
        self,
        device: BlockDevice | Mapping[str, BlockDevice],
        host: str = "127.0.0.1",
        port: int = 10809,
        *,
        name: str = "",
        description: str = "",
        readonly: bool = False,
        allow_remote: bool = False,
        max_connections: int = 16,
    ) -> None:
        self.exports: dict[str, BlockDevice] = (
            dict(device) if isinstance(device, Mapping) else {name: device}
        )
        self.device = next(iter(self.exports.values()))
        self.name = name if not isinstance(device, Mapping) else ""
        self.description = description
        self.readonly = readonly
        self.max_connections = max_connections
        family, sockaddr = resolve_bind(host, port, allow_remote)
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(sockaddr)
        except OSError as err:
            self._listener.close()
            raise NBDConfigError(f"cannot listen for NBD on {host}:{port}: {err}") from err
        self._listener.listen(16)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self.stats = {"connections": 0, "requests": 0, "errors": 0, "rejected": 0}

    @property
    def uri(self) -> str:
        """The URI of the export (of the first of several: see ``uris``)."""
        return self.uris[0]

    @property
    def uris(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"nbd://{host}:{self.port}/{name}" for name in self.exports]

    def export(self, name: bytes) -> BlockDevice | None:
        """The device a client asks for by ``name`` (the empty name: the one export)."""
        try:
            text = name.decode()
        except UnicodeDecodeError:
            return None
        if text == "" and len(self.exports) == 1:
            return self.device
        return self.exports.get(text)

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def start(self) -> None:
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="nbd-accept", daemon=True
        )
        self._accept_thread.start()
        for uri, dev in zip(self.uris, self.exports.values(), strict=True):
            logger.info("NBD: serving %d bytes on %s", dev.size, uri)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, hang up on every client, wait for their threads."""
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, thread in conns:
            thread.join(timeout)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if not full:
                    thread = threading.Thread(
                        target=self._serve_connection,
                        args=(sock, peer),
                        daemon=True,
                        name=f"nbd-{peer[0]}:{peer[1]}",
                    )
                    self._conns[sock] = thread
                    self.stats["connections"] += 1
            if full:
                logger.warning("NBD: %s refused: %d connections already", peer, len(self._conns))
                self.stats["rejected"] += 1
                sock.close()
                continue
            thread.start()

    def _serve_connection(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn = _Connection(self, sock)
            conn.run()
        except _Hangup as why:
            if str(why):
                logger.info("NBD: %s:%s closed: %s", peer[0], peer[1], why)
        except OSError as err:
            logger.info("NBD: %s:%s connection error: %s", peer[0], peer[1], err)
        except Exception:  # the one broad catch: a bug in a handler must not kill the server
            logger.exception("NBD: %s:%s internal error; connection closed", peer[0], peer[1])
        finally:
            with self._lock:
                self._conns.pop(sock, None)
            sock.close()
