"""The protocol server: JSON lines on a Unix socket, a vsock port or a virtio-serial port.

One request at a time per connection, many connections at once. Nothing a client sends can
kill the daemon or disturb a freeze in progress: bad lines get an error reply, a line longer
than protocol.MAX_LINE gets an error and the connection is closed, and a command already
started runs to its end even if its client goes away (the ceiling covers a host that never
comes back), except a freeze bound to its connection (``"bound": true``): each connection,
and each host a virtio-serial port sees come and go, is a ``Peer``, and when it goes the
session undoes a freeze bound to it at once (``Dispatcher.hangup``).
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import select
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent import protocol
from agent.session import Peer, Session
from common.errors import QuiesceError

logger = logging.getLogger(__name__)
Dispatch = Callable[[bytes, Peer], Awaitable[dict[str, Any]]]
Hangup = Callable[[Peer], Awaitable[None]]
_background: set[asyncio.Task[None]] = set()  # hang-up handlers running (kept referenced)


def _spawn(coro: Awaitable[None]) -> None:
    """Run a hang-up handler on its own: it waits for a freeze in progress, and neither the
    connection's end nor the serial channel's loop may wait with it or cancel it."""
    task: asyncio.Task[None] = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


class Dispatcher:
    """Turns one request line into one reply object."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def __call__(self, line: bytes, peer: Peer) -> dict[str, Any]:
        try:
            req = protocol.parse_request(line)
        except protocol.ProtocolError as err:
            return protocol.failure(err.error_class, err.desc, id=protocol.request_id(line))
        try:
            # shield: a client that disconnects must not cancel a freeze half-way
            ret = await asyncio.shield(asyncio.ensure_future(self._run(req, peer)))
            return protocol.success(ret, req.id)
        except QuiesceError as err:
            return protocol.failure(err.code, str(err), _jsonable(err.data), req.id)
        except Exception as err:  # noqa: BLE001 - an error reply, never a dead daemon
            logger.exception("internal error in %s", req.execute)
            return protocol.failure(protocol.INTERNAL, f"internal error: {err!r}", id=req.id)

    async def hangup(self, peer: Peer) -> None:
        """``peer`` went away: a freeze bound to it is undone (the session says so)."""
        await self.session.host_gone(peer)

    async def _run(self, req: protocol.Request, peer: Peer) -> Any:
        args, s = req.arguments, self.session
        if req.execute == "ping":
            return {"pong": True, "pid": os.getpid()}
        if req.execute == "freeze":
            label, writers, timeout, bound = _freeze_args(args)
            return await s.freeze(label, writers, timeout, peer if bound else None)
        if req.execute == "thaw":
            return await s.thaw()
        if req.execute == "abort":
            return await s.abort()
        if req.execute == "status":
            return s.status()
        return s.writers()


def _freeze_args(args: dict[str, Any]) -> tuple[str, list[str] | None, float | None, bool]:
    unknown = set(args) - {"label", "writers", "skip", "timeout", "bound"}
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
    skip = args.get("skip", [])
    if not isinstance(skip, list) or not all(isinstance(w, str) and w for w in skip):
        raise BadArguments("freeze: 'skip' must be a list of writer names (kind or kind:name)")
    if skip:  # the writers' selection reads a leading '-' as "leave out" (agent/writers.py)
        writers = [w for w in writers or [] if not w.startswith("-")] + [f"-{w}" for w in skip]
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise BadArguments("freeze: 'timeout' must be a positive number of seconds")
    bound = args.get("bound", False)
    if not isinstance(bound, bool):
        raise BadArguments("freeze: 'bound' must be true or false")
    return label, writers, timeout, bound


class BadArguments(QuiesceError):
    code = protocol.BAD_REQUEST


def _jsonable(data: dict[str, object]) -> dict[str, Any]:
    return {k: v for k, v in data.items()}


# -- stream connections (unix, vsock) ------------------------------------------------------
Item = bytes | dict[str, Any] | None  # a request line, a reply ready to send, the end


async def serve_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    dispatch: Dispatch,
    authorize: Callable[[socket.socket], str | None],
    hangup: Hangup,
) -> None:
    """One connection: its requests answered in order. It is read all along, also while a
    request runs, so that its end is seen at once and a freeze bound to it undone."""
    sock = writer.get_extra_info("socket")
    refusal = authorize(sock) if sock is not None else None
    peer = Peer(f"the client {_peer_name(sock)}")
    queue: asyncio.Queue[Item] = asyncio.Queue()
    reading = asyncio.ensure_future(_read_stream(reader, queue, peer, hangup))
    try:
        if refusal:
            logger.warning("refused a connection: %s", refusal)
            writer.write(protocol.encode(protocol.failure("Unauthorized", refusal)))
            await writer.drain()
            return
        while (item := await queue.get()) is not None:
            reply = item if isinstance(item, dict) else await dispatch(item, peer)
            writer.write(protocol.encode(reply))
            await writer.drain()
            if not isinstance(item, bytes):  # a line too long was refused: hang up
                return
    except (ConnectionError, OSError):
        pass  # the client went away; whatever it started goes on, but a bound freeze
    finally:
        reading.cancel()
        writer.close()
        if not peer.gone:
            peer.gone = True
            _spawn(hangup(peer))


async def _read_stream(
    reader: asyncio.StreamReader, queue: asyncio.Queue[Item], peer: Peer, hangup: Hangup
) -> None:
    lines = protocol.LineBuffer(protocol.MAX_LINE)
    try:
        while (batch := await protocol.read_lines(reader, lines)) is not None:
            for line in batch:
                queue.put_nowait(line)
    except protocol.ProtocolError as err:  # a line too long: say so and hang up
        queue.put_nowait(protocol.failure(err.error_class, f"{err.desc}; closing the connection"))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait(None)
    if not peer.gone:
        peer.gone = True
        _spawn(hangup(peer))


def _peer_name(sock: socket.socket | None) -> str:
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return f"pid {struct.unpack('3i', creds)[0]}"
        except OSError:
            return "on the unix socket"
    try:
        return str(sock.getpeername()) if sock is not None else "?"
    except OSError:
        return "?"


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
PORTS = Path("/sys/class/virtio-ports")  # vportNpM/name holds the name QEMU gave the port
WAKE_AT_LEAST = 1.0  # seconds: re-check the port even if no wake-up came (a missed edge)
REPLY_GRACE = 1.0  # seconds a reply waits for the kernel to see its host connect


def port_path(configured: str, ports: Path = PORTS) -> str:
    """The device to open for ``listen.virtio_serial``: the path as given when it exists
    (``/dev/virtio-ports/NAME`` needs udev, ``/dev/vportNpM`` does not), else the
    ``/dev/vportNpM`` whose sysfs name is the path's last part. Raises FileNotFoundError."""
    if os.path.exists(configured):
        return configured
    name = os.path.basename(configured)
    for entry in sorted(ports.glob("*/name")) if ports.is_dir() else []:
        if entry.read_text().strip() == name:
            return f"/dev/{entry.parent.name}"
    raise FileNotFoundError(errno.ENOENT, f"no virtio-serial port named {name!r}", configured)


def port_problem(configured: str) -> str | None:
    """Why ``listen.virtio_serial`` cannot be served now (``check``), or None: the port is
    missing, or another process holds it (a virtio-serial port has one opener)."""
    try:
        fd = os.open(port_path(configured), os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        why = {
            errno.ENOENT: "no such port (does the VM have -device virtserialport,name=NAME, "
            "and is virtio_console loaded?)",
            errno.EBUSY: "busy: another process holds it (a running quiesce-agent, or qemu-ga "
            "on the wrong port?)",
        }.get(err.errno or 0, err.strerror or str(err))
        return f"listen.virtio_serial: {configured}: {why}"
    os.close(fd)
    return None


class SerialChannel:
    """Requests and replies over a virtio-serial port, held open for the daemon's life.

    Closing a virtio-serial port makes the guest kernel drop what the host already queued,
    so the port is opened once and never closed while the daemon runs. When no host is
    connected the kernel reports the port readable and hung up at once, again and again;
    so the port is watched edge-triggered (an epoll of its own, itself watched by the event
    loop) and a host connecting, leaving or writing wakes the channel exactly once. A read
    of nothing means no host, and ``on_hangup`` is told (a freeze bound to its host is
    undone) -- except right after a request was read: a new host's bytes can reach the guest
    before the kernel has seen the host connect (another virtqueue), and taking that for a
    hang-up lost 5 of 72 requests on a real guest. A reply waits up to REPLY_GRACE for its
    host; one whose host stays gone is dropped (the next host would take it for its own).
    While a request runs the port is watched too (POLLHUP, without reading), so a host that
    hangs up in the middle of a freeze is seen at once. Each host between a connect and a
    hang-up is a ``Peer`` of its own. Opening a missing or busy port is logged once at
    WARNING and retried every second.
    """

    def __init__(self, path: str, dispatch: Dispatch, on_hangup: Hangup | None = None) -> None:
        self.path = path
        self.dispatch = dispatch
        self.on_hangup = on_hangup
        self.host_connected = False
        self.peer = Peer(f"the virtio-serial host of {path}")
        self.opened: Callable[[int], None] | None = None  # given the port's fd once it is open
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

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
        fd = await self._open()
        watch = select.epoll()
        watch.register(fd, select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        loop = asyncio.get_running_loop()
        loop.add_reader(watch.fileno(), self._wake.set)
        try:
            await self._serve(fd, watch)
        finally:
            loop.remove_reader(watch.fileno())
            watch.close()
            os.close(fd)

    async def _open(self) -> int:
        warned = False
        while True:
            try:
                fd = os.open(port_path(self.path), os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
            except OSError as err:
                level = logging.DEBUG if warned else logging.WARNING
                logger.log(
                    level,
                    "virtio-serial %s: cannot open it (%s); retrying every 1 s "
                    "(check listen.virtio_serial and the VM's virtserialport)",
                    self.path,
                    err.strerror or err,
                )
                warned = True
                await asyncio.sleep(1.0)
                continue
            if warned:
                logger.info("virtio-serial %s: opened", self.path)
            if self.opened is not None:
                self.opened(fd)
            return fd

    async def _wait(self, watch: select.epoll) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), WAKE_AT_LEAST)
        except TimeoutError:
            pass
        self._wake.clear()
        watch.poll(0)  # consume the edge; the next change wakes us again

    async def _serve(self, fd: int, watch: select.epoll) -> None:
        lines = protocol.LineBuffer(protocol.MAX_LINE)
        while True:
            batch = await self._read(fd, lines)
            if not batch:
                await self._wait(watch)
            for item in batch:
                if isinstance(item, dict):
                    reply = item
                else:
                    reply = await self._dispatch_watching(fd, watch, lines, item)
                await self._reply(fd, watch, reply)

    async def _dispatch_watching(
        self, fd: int, watch: select.epoll, lines: protocol.LineBuffer, line: bytes
    ) -> dict[str, Any]:
        """Run one request; meanwhile a host hang-up is acted on at once."""
        task = asyncio.ensure_future(self.dispatch(line, self.peer))
        while not task.done():
            woken = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({task, woken}, timeout=WAKE_AT_LEAST, return_when="FIRST_COMPLETED")
            woken.cancel()
            if task.done():
                break
            self._wake.clear()
            watch.poll(0)
            if self.host_connected and _hung_up(fd):
                await self._host_left(lines)
        return task.result()

    async def _read(self, fd: int, lines: protocol.LineBuffer) -> list[bytes | dict[str, Any]]:
        """Every request line the port has now (or the error reply for a line too long);
        notes a host that connected or left."""
        batch: list[bytes | dict[str, Any]] = []
        got = False
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                self._connected()  # connected, nothing more to read
                return batch
            except OSError as err:
                if err.errno != errno.EIO:  # EIO: a pty stand-in whose master is gone
                    raise
                chunk = b""
            if not chunk and got:
                # a new host's bytes can come before the kernel has seen it connect (they
                # travel on another virtqueue than the port-open message): reading nothing
                # right after its request is not its hang-up
                return batch
            if not chunk:
                await self._host_left(lines)
                return batch
            got = True
            self._connected()
            try:
                batch += lines.feed(chunk)
            except protocol.ProtocolError as err:  # a line too long: refused, the port goes on
                batch.append(protocol.failure(err.error_class, f"{err.desc}; discarded"))

    def _connected(self) -> None:
        if not self.host_connected:
            self.host_connected = True
            self.peer = Peer(f"the virtio-serial host of {self.path}")

    async def _host_left(self, lines: protocol.LineBuffer) -> None:
        lines.take_rest()  # half a request from a host that left is nobody's
        if self.host_connected:
            self.host_connected = False
            self.peer.gone = True
            logger.info("virtio-serial %s: the host hung up", self.path)
            if self.on_hangup is not None:
                _spawn(self.on_hangup(self.peer))

    async def _reply(self, fd: int, watch: select.epoll, reply: dict[str, Any]) -> None:
        """Write the reply whole. The port blocks writes while no host is connected: a host
        whose connect the kernel has not seen yet gets it once it has (REPLY_GRACE); a host
        that stays gone that long had left, and the reply is dropped (see the class doc)."""
        data = protocol.encode(reply)
        give_up = time.monotonic() + REPLY_GRACE
        while data:
            try:
                data = data[os.write(fd, data) :]
                continue
            except BlockingIOError:
                pass
            await self._wait(watch)
            if _hung_up(fd) and time.monotonic() >= give_up:
                await self._host_left(protocol.LineBuffer())
                logger.info("virtio-serial %s: a reply to a host that left was dropped", self.path)
                return


def _hung_up(fd: int) -> bool:
    """Does the port say no host is connected (POLLHUP), without reading from it?"""
    probe = select.poll()
    probe.register(fd, select.POLLOUT)
    return any(ev & select.POLLHUP for _, ev in probe.poll(0))
