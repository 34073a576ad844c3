"""One NBD client: the fixed-newstyle negotiation, then the transmission loop, on one thread.

Options: EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_/SET_META_CONTEXT with
``base:allocation``; every other option gets ERR_UNSUP and the negotiation goes on. Then
READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS and DISC, with bounds and flags
checked and the errors the protocol names (EINVAL, ENOSPC, EPERM). A device failure becomes
an NBD error reply (``nbd_error``); a protocol violation ends the connection (``_Hangup``).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from typing import TYPE_CHECKING

from host.serve.device import BlockDevice, errno_of
from host.serve.nbd_wire import (
    CHUNK_BLOCK_STATUS,
    CHUNK_DONE,
    CHUNK_ERROR,
    CHUNK_NONE,
    CHUNK_OFFSET_DATA,
    CLIENT_FLAGS_KNOWN,
    CMD_BLOCK_STATUS,
    CMD_DISC,
    CMD_FLAG_DF,
    CMD_FLAG_FUA,
    CMD_FLAG_NO_HOLE,
    CMD_FLAG_REQ_ONE,
    CMD_FLUSH,
    CMD_READ,
    CMD_TRIM,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    EINVAL,
    EIO,
    ENOMEM,
    ENOSPC,
    ENOTSUP,
    EOVERFLOW,
    EPERM,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    HANDSHAKE_TIMEOUT,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_DESCRIPTION,
    INFO_EXPORT,
    INFO_NAME,
    MAX_DISCARDED_WRITE,
    MAX_OPTION_DATA,
    MAX_OPTIONS,
    MAX_PAYLOAD,
    META_BASE_ALLOCATION,
    META_ID_ALLOCATION,
    NBDMAGIC,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_INFO,
    OPT_LIST,
    OPT_LIST_META_CONTEXT,
    OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY,
    PREFERRED_BLOCK,
    REP_ACK,
    REP_ERR_INVALID,
    REP_ERR_TOO_BIG,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_META_CONTEXT,
    REP_SERVER,
    REPLY_MAGIC,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    TF_CAN_MULTI_CONN,
    TF_HAS_FLAGS,
    TF_READ_ONLY,
    TF_SEND_DF,
    TF_SEND_FLUSH,
    TF_SEND_FUA,
    TF_SEND_TRIM,
    TF_SEND_WRITE_ZEROES,
)

if TYPE_CHECKING:
    from host.serve.nbd import NBDServer

logger = logging.getLogger(__name__)


class _Hangup(Exception):
    """The connection is over: the client left, or broke the protocol beyond recovery."""


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
            self.device = self.chosen(data)
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
        return self.server.export(name) is not None

    def chosen(self, name: bytes) -> BlockDevice:
        device = self.server.export(name)
        assert device is not None  # known_export said so
        return device

    def unknown(self, name: bytes) -> str:
        names = ", ".join(repr(n) for n in self.server.exports)
        return f"no export named {name!r} (this server has {names})"

    def opt_list(self, opt: int, data: bytes) -> bool:
        if data:
            self.opt_error(opt, REP_ERR_INVALID, "LIST takes no data")
            return False
        for export in self.server.exports:
            name = export.encode()
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
            self.opt_error(opt, REP_ERR_UNKNOWN, self.unknown(name))
            return False
        device = self.chosen(name)
        info = struct.pack(">HQH", INFO_EXPORT, device.size, self.transmission_flags())
        self.opt_reply(opt, REP_INFO, info)
        if INFO_NAME in wanted:
            shown = name or self.server.name.encode()
            self.opt_reply(opt, REP_INFO, struct.pack(">H", INFO_NAME) + shown)
        if INFO_DESCRIPTION in wanted and self.server.description:
            desc = self.server.description.encode()[:4096]
            self.opt_reply(opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + desc)
        if INFO_BLOCK_SIZE in wanted:
            sizes = struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_PAYLOAD)
            self.opt_reply(opt, REP_INFO, sizes)
        self.opt_reply(opt, REP_ACK)
        if opt == OPT_GO:
            self.device = device
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
            self.opt_error(opt, REP_ERR_UNKNOWN, self.unknown(name))
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
