"""The protocol server: JSON lines on a Unix socket, a vsock port or a virtio-serial port.

One request at a time per connection, many connections at once. Nothing a client sends can
kill the daemon or disturb a freeze in progress: bad lines get an error reply, a line longer
than protocol.MAX_LINE gets an error and the connection is closed, and a command already
started runs to its end even if its client goes away (the ceiling covers a host that never
comes back).
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from agent import protocol
from agent.session import Session
from common.errors import QuiesceError

logger = logging.getLogger(__name__)
Dispatch = Callable[[bytes], Awaitable[dict[str, Any]]]


class Dispatcher:
    """Turns one request line into one reply object."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def __call__(self, line: bytes) -> dict[str, Any]:
        try:
            req = protocol.parse_request(line)
        except protocol.ProtocolError as err:
            return protocol.failure(err.error_class, err.desc, id=protocol.request_id(line))
        try:
            # shield: a client that disconnects must not cancel a freeze half-way
            ret = await asyncio.shield(asyncio.ensure_future(self._run(req)))
            return protocol.success(ret, req.id)
        except QuiesceError as err:
            return protocol.failure(err.code, str(err), _jsonable(err.data), req.id)
        except Exception as err:  # noqa: BLE001 - an error reply, never a dead daemon
            logger.exception("internal error in %s", req.execute)
            return protocol.failure(protocol.INTERNAL, f"internal error: {err!r}", id=req.id)

    async def _run(self, req: protocol.Request) -> Any:
        args, s = req.arguments, self.session
        if req.execute == "ping":
            return {"pong": True, "pid": os.getpid()}
        if req.execute == "freeze":
            return await s.freeze(*_freeze_args(args))
        if req.execute == "thaw":
            return await s.thaw()
        if req.execute == "abort":
            return await s.abort()
        if req.execute == "status":
            return s.status()
        return s.writers()


def _freeze_args(args: dict[str, Any]) -> tuple[str, list[str] | None, float | None]:
    unknown = set(args) - {"label", "writers", "timeout"}
    if unknown:
        raise BadArguments(f"freeze: unknown argument(s) {', '.join(sorted(unknown))}")
    label = args.get("label", "snapshot")
    writers = args.get("writers")
    timeout = args.get("timeout")
    if not isinstance(label, str) or len(label) > 200:
        raise BadArguments("freeze: 'label' must be a string of at most 200 characters")
    if writers is not None and (
        not isinstance(writers, list) or not all(isinstance(w, str) for w in writers)
    ):
        raise BadArguments("freeze: 'writers' must be a list of writer names")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise BadArguments("freeze: 'timeout' must be a positive number of seconds")
    return label, writers, timeout


class BadArguments(QuiesceError):
    code = protocol.BAD_REQUEST


def _jsonable(data: dict[str, object]) -> dict[str, Any]:
    return {k: v for k, v in data.items()}


# -- stream connections (unix, vsock) ------------------------------------------------------
async def serve_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    dispatch: Dispatch,
    authorize: Callable[[socket.socket], str | None],
) -> None:
    sock = writer.get_extra_info("socket")
    refusal = authorize(sock) if sock is not None else None
    try:
        if refusal:
            logger.warning("refused a connection: %s", refusal)
            writer.write(protocol.encode(protocol.failure("Unauthorized", refusal)))
            await writer.drain()
            return
        lines = protocol.LineBuffer(protocol.MAX_LINE)
        while True:
            try:
                batch = await protocol.read_lines(reader, lines)
            except protocol.ProtocolError as err:  # a line too long: say so and hang up
                refused = protocol.failure(err.error_class, f"{err.desc}; closing the connection")
                writer.write(protocol.encode(refused))
                await writer.drain()
                return
            if batch is None:
                return
            for line in batch:
                writer.write(protocol.encode(await dispatch(line)))
                await writer.drain()
    except (ConnectionError, OSError):
        pass  # the client went away; whatever it started goes on
    finally:
        writer.close()


class PeerPolicy:
    """SO_PEERCRED check: root, our own user, or members of a configured group."""

    def __init__(self, group: str | None) -> None:
        self.gid = grp.getgrnam(group).gr_gid if group else None

    def __call__(self, sock: socket.socket) -> str | None:
        if sock.family != socket.AF_UNIX:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        if uid in (0, os.geteuid()):
            return None
        if self.gid is not None and (gid == self.gid or self.gid in _groups(pid)):
            return None
        return f"peer pid {pid} uid {uid} is not root and not in the allowed group"


def _groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def unix_listener(path: str, group: str | None) -> socket.socket:
    """Bind the Unix socket 0600 (0660 with a group) from the start; replace a stale one."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            raise OSError(errno.EADDRINUSE, f"another agent is listening on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177 if group is None else 0o117)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    sock.listen(16)
    return sock


def vsock_listener(port: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.bind((socket.VMADDR_CID_ANY, port))
    except OSError as err:
        raise OSError(
            err.errno,
            f"vsock port {port}: {err.strerror} (is this a VM with a "
            "vsock device, and is the port free?)",
        ) from err
    sock.listen(16)
    return sock


# -- virtio-serial: a character device, one implicit connection ----------------------------
class SerialChannel:
    """Requests and replies over a virtio-serial port (/dev/virtio-ports/NAME).

    The port is not a listening socket: it is opened once and read line by line. When the
    host end is closed, reads fail or return nothing; the port is then reopened after a pause.
    """

    def __init__(self, path: str, dispatch: Dispatch) -> None:
        self.path = path
        self.dispatch = dispatch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except OSError as err:
                logger.debug("virtio-serial %s: %s; reopening", self.path, err)
            await asyncio.sleep(1.0)

    async def _session(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(fd, ready.set)
        lines = protocol.LineBuffer(protocol.MAX_LINE)
        try:
            while True:
                await ready.wait()
                ready.clear()
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                try:
                    batch = lines.feed(chunk)
                except protocol.ProtocolError as err:
                    discarded = protocol.failure(err.error_class, f"{err.desc}; discarded")
                    await self._reply(fd, discarded)
                    continue
                for line in batch:
                    await self._reply(fd, await self.dispatch(line))
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    async def _reply(self, fd: int, reply: dict[str, Any]) -> None:
        data = protocol.encode(reply)
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)
