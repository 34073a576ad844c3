"""An NBD server that exposes one block device (the disk's current state) to NBD clients.

Fixed newstyle negotiation (EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
LIST_/SET_META_CONTEXT with ``base:allocation``; every other option gets ERR_UNSUP and the
negotiation goes on), then READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS and DISC.
Bounds and flags are checked with the errors the protocol names (EINVAL, ENOSPC, EPERM).

One thread per connection, requests handled in order on it. The device API is synchronous
(file I/O, an flock-holding engine), so asyncio would only add a hop to a thread for every
request; a connection thread keeps the code straight and the GIL is released during I/O.
Several connections at once are fine: the device serialises its writers itself (see
``host.serve.control.GatedDevice``), and a FLUSH on one connection flushes the whole device,
so CAN_MULTI_CONN is advertised truthfully.

The server binds loopback by default and refuses any other address unless ``allow_remote``.

Raises: ``NBDConfigError`` (bad or non-loopback address) from the constructor; nothing a
client sends raises out of the server: a protocol violation closes that connection only.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Protocol

from common.errors import QuiesceError
from host.serve.device import errno_of

logger = logging.getLogger(__name__)

# --- protocol constants (NetworkBlockDevice/nbd doc/proto.md) ---------------------------------
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FLAGS_KNOWN = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 0x80000001
REP_ERR_POLICY = 0x80000002
REP_ERR_INVALID = 0x80000003
REP_ERR_UNKNOWN = 0x80000006
REP_ERR_TOO_BIG = 0x80000009

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3

CHUNK_DONE = 1
CHUNK_NONE = 0
CHUNK_OFFSET_DATA = 1
CHUNK_BLOCK_STATUS = 5
CHUNK_ERROR = 0x8001

EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95

META_BASE_ALLOCATION = "base:allocation"
META_ID_ALLOCATION = 1

MAX_PAYLOAD = 32 * 1024 * 1024  # largest READ/WRITE we accept, advertised in BLOCK_SIZE
MAX_DISCARDED_WRITE = 256 * 1024 * 1024  # an oversize WRITE's payload we skip; beyond: hang up
MAX_OPTION_DATA = 64 * 1024  # option payloads are names and queries; more is hostile
MAX_OPTIONS = 256  # options in one negotiation before we hang up
PREFERRED_BLOCK = 4096
HANDSHAKE_TIMEOUT = 30.0  # seconds a client may take to negotiate


class BlockDevice(Protocol):
    """What the servers need of a disk: the engine's ``Disk`` and ``RawFile`` both fit."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...


class RawFile:
    """A plain file as a BlockDevice: for tests and for serving a raw image directly."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.size = os.fstat(self.fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data))

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def write_zeroes(self, offset: int, length: int) -> None:
        chunk = bytes(min(length, 1 << 20))
        while length > 0:
            n = min(length, len(chunk))
            self.write(offset, chunk[:n])
            offset, length = offset + n, length - n

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class NBDConfigError(QuiesceError):
    """The server cannot start as asked (address refused, port taken)."""

    code = "NBDConfigError"
    exit_code = 2


class _Hangup(Exception):
    """The connection is over: the client left, or broke the protocol beyond recovery."""


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


NBD_ERRNO = {  # the errno of a device failure (device.errno_of) -> the one NBD's wire has
    errno.EPERM: EPERM,
    errno.EROFS: EPERM,  # NBD has no EROFS: a read-only export answers EPERM (proto.md)
    errno.EACCES: EPERM,
    errno.ENOSPC: ENOSPC,
    errno.EDQUOT: ENOSPC,
    errno.ENOMEM: ENOMEM,
    errno.EINVAL: EINVAL,
    errno.EOVERFLOW: EOVERFLOW,
    errno.ENOTSUP: ENOTSUP,
}


def nbd_error(err: BaseException) -> int:
    """The NBD error for a device failure: the shared errno table, narrowed to NBD's."""
    return NBD_ERRNO.get(errno_of(err), EIO)


class NBDServer:
    """Serves ``device`` to any number of NBD clients; ``start()`` returns once listening."""

    def __init__(
        self,
        device: BlockDevice,
        host: str = "127.0.0.1",
        port: int = 10809,
        *,
        name: str = "",
        description: str = "",
        readonly: bool = False,
        allow_remote: bool = False,
        max_connections: int = 16,
        allocation: Callable[[int, int], list[tuple[int, int]]] | None = None,
    ) -> None:
        self.device = device
        self.name = name
        self.description = description
        self.readonly = readonly
        self.max_connections = max_connections
        self.allocation = allocation
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
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{self.name}"

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def start(self) -> None:
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="nbd-accept", daemon=True
        )
        self._accept_thread.start()
        logger.info("NBD: serving %d bytes on %s", self.device.size, self.uri)

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


class _Connection:
    """One client: negotiation, then the transmission loop."""

    def __init__(self, server: NBDServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.device = server.device
        self.structured = False
        self.meta_allocation = False
        self.no_zeroes = False

    # --- socket helpers ---
    def recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise _Hangup("" if got == 0 else "client closed mid-message")
            got += k
        return bytes(buf)

    def discard(self, n: int) -> None:
        while n > 0:
            n -= len(self.recv_exact(min(n, 1 << 20)))

    def send(self, *parts: bytes) -> None:
        self.sock.sendall(b"".join(parts) if len(parts) > 1 else parts[0])

    # --- negotiation ---
    def run(self) -> None:
        self.sock.settimeout(HANDSHAKE_TIMEOUT)
        self.send(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (cflags,) = struct.unpack(">I", self.recv_exact(4))
        if cflags & ~CLIENT_FLAGS_KNOWN:
            raise _Hangup(f"unknown client flags {cflags:#x}")
        self.no_zeroes = bool(cflags & FLAG_NO_ZEROES)
        fixed = bool(cflags & FLAG_FIXED_NEWSTYLE)
        for _ in range(MAX_OPTIONS):
            if self.negotiate_one(fixed):
                self.sock.settimeout(None)
                self.transmission()
                return
        raise _Hangup(f"more than {MAX_OPTIONS} options")

    def transmission_flags(self) -> int:
        flags = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN
        if self.server.readonly:
            flags |= TF_READ_ONLY
        else:
            flags |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES
        if self.structured:
            flags |= TF_SEND_DF
        return flags

    def opt_reply(self, opt: int, rtype: int, data: bytes = b"") -> None:
        self.send(struct.pack(">QIII", REPLY_MAGIC, opt, rtype, len(data)), data)

    def opt_error(self, opt: int, rtype: int, message: str) -> None:
        self.opt_reply(opt, rtype, message.encode())

    def negotiate_one(self, fixed: bool) -> bool:
        """Handle one option; True when the client entered transmission."""
        magic, opt, length = struct.unpack(">QII", self.recv_exact(16))
        if magic != IHAVEOPT:
            raise _Hangup(f"bad option magic {magic:#x}")
        if length > MAX_OPTION_DATA:
            if opt == OPT_EXPORT_NAME or not fixed:
                raise _Hangup(f"option {opt} with {length} bytes of data")
            self.discard(length)
            self.opt_error(opt, REP_ERR_TOO_BIG, f"option data over {MAX_OPTION_DATA} bytes")
            return False
        data = self.recv_exact(length)
        if opt == OPT_EXPORT_NAME:
            if not self.known_export(data):
                raise _Hangup(f"unknown export {data!r}")
            tail = b"" if self.no_zeroes else bytes(124)
            self.send(struct.pack(">QH", self.device.size, self.transmission_flags()), tail)
            return True
        if not fixed:
            raise _Hangup(f"option {opt} from a client that is not fixed newstyle")
        if opt == OPT_ABORT:
            self.opt_reply(opt, REP_ACK)
            raise _Hangup("")
        handler = {
            OPT_LIST: self.opt_list,
            OPT_INFO: self.opt_info_go,
            OPT_GO: self.opt_info_go,
            OPT_STRUCTURED_REPLY: self.opt_structured,
            OPT_LIST_META_CONTEXT: self.opt_meta_context,
            OPT_SET_META_CONTEXT: self.opt_meta_context,
        }.get(opt)
        if handler is None:
            self.opt_error(opt, REP_ERR_UNSUP, f"option {opt} is not supported")
            return False
        try:
            return handler(opt, data)
        except (struct.error, IndexError, UnicodeDecodeError):
            self.opt_error(opt, REP_ERR_INVALID, "malformed option data")
            return False

    def known_export(self, name: bytes) -> bool:
        return name in (b"", self.server.name.encode())

    def opt_list(self, opt: int, data: bytes) -> bool:
        if data:
            self.opt_error(opt, REP_ERR_INVALID, "LIST takes no data")
            return False
        name = self.server.name.encode()
        self.opt_reply(opt, REP_SERVER, struct.pack(">I", len(name)) + name)
        self.opt_reply(opt, REP_ACK)
        return False

    def opt_info_go(self, opt: int, data: bytes) -> bool:
        (namelen,) = struct.unpack_from(">I", data, 0)
        if 4 + namelen + 2 > len(data):
            raise struct.error("name length past the option")
        name = data[4 : 4 + namelen]
        (count,) = struct.unpack_from(">H", data, 4 + namelen)
        if 4 + namelen + 2 + 2 * count != len(data):
            raise struct.error("info request count does not match the length")
        wanted = struct.unpack_from(f">{count}H", data, 6 + namelen)
        if not self.known_export(name):
            self.opt_error(opt, REP_ERR_UNKNOWN, f"no export named {name!r}")
            return False
        info = struct.pack(">HQH", INFO_EXPORT, self.device.size, self.transmission_flags())
        self.opt_reply(opt, REP_INFO, info)
        if INFO_NAME in wanted:
            self.opt_reply(opt, REP_INFO, struct.pack(">H", INFO_NAME) + self.server.name.encode())
        if INFO_DESCRIPTION in wanted and self.server.description:
            desc = self.server.description.encode()[:4096]
            self.opt_reply(opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + desc)
        if INFO_BLOCK_SIZE in wanted:
            sizes = struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_PAYLOAD)
            self.opt_reply(opt, REP_INFO, sizes)
        self.opt_reply(opt, REP_ACK)
        return opt == OPT_GO

    def opt_structured(self, opt: int, data: bytes) -> bool:
        if data:
            self.opt_error(opt, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
        else:
            self.structured = True
            self.opt_reply(opt, REP_ACK)
        return False

    def opt_meta_context(self, opt: int, data: bytes) -> bool:
        (namelen,) = struct.unpack_from(">I", data, 0)
        name = data[4 : 4 + namelen]
        if len(name) != namelen:
            raise struct.error("name length past the option")
        (count,) = struct.unpack_from(">I", data, 4 + namelen)
        pos, queries = 8 + namelen, []
        for _ in range(count):
            (qlen,) = struct.unpack_from(">I", data, pos)
            query = data[pos + 4 : pos + 4 + qlen]
            if len(query) != qlen:
                raise struct.error("query length past the option")
            queries.append(query.decode())
            pos += 4 + qlen
        if pos != len(data):
            raise struct.error("trailing bytes after the queries")
        if opt == OPT_SET_META_CONTEXT and not self.structured:
            self.opt_error(opt, REP_ERR_INVALID, "SET_META_CONTEXT needs STRUCTURED_REPLY first")
            return False
        if not self.known_export(name):
            self.opt_error(opt, REP_ERR_UNKNOWN, f"no export named {name!r}")
            return False
        matches = (not queries and opt == OPT_LIST_META_CONTEXT) or any(
            q in (META_BASE_ALLOCATION, "base:") for q in queries
        )
        if opt == OPT_SET_META_CONTEXT:
            self.meta_allocation = matches
        if matches:
            ctx = struct.pack(">I", META_ID_ALLOCATION) + META_BASE_ALLOCATION.encode()
            self.opt_reply(opt, REP_META_CONTEXT, ctx)
        self.opt_reply(opt, REP_ACK)
        return False

    # --- transmission ---
    def transmission(self) -> None:
        stats = self.server.stats
        while True:
            magic, flags, cmd, cookie, offset, length = struct.unpack(
                ">IHHQQI", self.recv_exact(28)
            )
            if magic != REQUEST_MAGIC:
                raise _Hangup(f"bad request magic {magic:#x}")
            stats["requests"] += 1
            if cmd == CMD_DISC:
                raise _Hangup("")
            payload = b""
            if cmd == CMD_WRITE:
                if length > MAX_PAYLOAD:
                    if length > MAX_DISCARDED_WRITE:
                        raise _Hangup(f"WRITE of {length} bytes")
                    self.discard(length)
                    self.reply_error(cookie, EINVAL, f"WRITE over {MAX_PAYLOAD} bytes", cmd)
                    continue
                payload = self.recv_exact(length)
            err, message = self.check(cmd, flags, offset, length)
            if err:
                stats["errors"] += 1
                self.reply_error(cookie, err, message, cmd)
                continue
            try:
                data = self.execute(cmd, flags, offset, length, payload, cookie)
            except Exception as exc:  # noqa: BLE001 - an NBD error reply, the server lives on
                stats["errors"] += 1
                code = nbd_error(exc)
                logger.warning("NBD: command %d at %d+%d failed: %s", cmd, offset, length, exc)
                self.reply_error(cookie, code, str(exc)[:200], cmd)
                continue
            if data is not None:
                self.reply_read(cookie, offset, data)
            elif cmd != CMD_BLOCK_STATUS:
                self.send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie))

    def check(self, cmd: int, flags: int, offset: int, length: int) -> tuple[int, str]:
        """The NBD error for a request that must not run, or (0, '')."""
        size = self.device.size
        allowed = {
            CMD_READ: CMD_FLAG_DF,
            CMD_WRITE: CMD_FLAG_FUA,
            CMD_FLUSH: 0,
            CMD_TRIM: CMD_FLAG_FUA,
            CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            CMD_BLOCK_STATUS: CMD_FLAG_REQ_ONE,
        }.get(cmd)
        if allowed is None:
            return EINVAL, f"unknown command {cmd}"
        if flags & ~allowed:
            return EINVAL, f"flags {flags:#x} not allowed on command {cmd}"
        if cmd == CMD_READ and length > MAX_PAYLOAD:
            return (EOVERFLOW if flags & CMD_FLAG_DF else EINVAL), f"READ over {MAX_PAYLOAD}"
        if cmd == CMD_BLOCK_STATUS and not self.meta_allocation:
            return EINVAL, "BLOCK_STATUS without a negotiated meta context"
        if cmd == CMD_FLUSH:
            return (EINVAL, "FLUSH with offset or length") if offset or length else (0, "")
        if self.server.readonly and cmd in (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES):
            return EPERM, "the export is read-only"
        if offset > size or length > size - offset:
            if cmd in (CMD_WRITE, CMD_WRITE_ZEROES):
                return ENOSPC, f"{offset}+{length} is past the end ({size})"
            return EINVAL, f"{offset}+{length} is past the end ({size})"
        return 0, ""

    def execute(
        self, cmd: int, flags: int, offset: int, length: int, payload: bytes, cookie: int
    ) -> bytes | None:
        dev = self.device
        if cmd == CMD_READ:
            return dev.read(offset, length) if length else b""
        if cmd == CMD_WRITE:
            if length:
                dev.write(offset, payload)
        elif cmd == CMD_WRITE_ZEROES:
            if length:
                dev.write_zeroes(offset, length)
        elif cmd == CMD_TRIM:
            pass  # advisory: the data stays what it was, which the protocol allows
        elif cmd == CMD_FLUSH:
            dev.flush()
        elif cmd == CMD_BLOCK_STATUS:
            self.reply_block_status(cookie, flags, offset, length)
        if flags & CMD_FLAG_FUA and cmd != CMD_BLOCK_STATUS:
            dev.flush()
        return None

    def reply_read(self, cookie: int, offset: int, data: bytes) -> None:
        if not self.structured:
            self.send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie), data)
        elif not data:
            self.send(
                struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, CHUNK_DONE, CHUNK_NONE, cookie, 0)
            )
        else:
            head = struct.pack(
                ">IHHQIQ",
                STRUCTURED_REPLY_MAGIC,
                CHUNK_DONE,
                CHUNK_OFFSET_DATA,
                cookie,
                8 + len(data),
                offset,
            )
            self.send(head, data)

    def reply_block_status(self, cookie: int, flags: int, offset: int, length: int) -> None:
        if self.server.allocation is not None and length:
            extents = self.server.allocation(offset, length) or [(length, 0)]
        else:
            extents = [(length, 0)]  # everything is data: true, if not the most precise answer
        if flags & CMD_FLAG_REQ_ONE:
            extents = extents[:1]
        body = struct.pack(">I", META_ID_ALLOCATION) + b"".join(
            struct.pack(">II", n, f) for n, f in extents
        )
        head = struct.pack(
            ">IHHQI", STRUCTURED_REPLY_MAGIC, CHUNK_DONE, CHUNK_BLOCK_STATUS, cookie, len(body)
        )
        self.send(head, body)

    def reply_error(self, cookie: int, err: int, message: str, cmd: int) -> None:
        if self.structured and cmd in (CMD_READ, CMD_BLOCK_STATUS):
            msg = message.encode()[:1024]
            body = struct.pack(">IH", err, len(msg)) + msg
            head = struct.pack(
                ">IHHQI", STRUCTURED_REPLY_MAGIC, CHUNK_DONE, CHUNK_ERROR, cookie, len(body)
            )
            self.send(head, body)
        else:
            self.send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, err, cookie))
