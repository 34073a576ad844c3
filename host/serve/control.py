"""The control channel of a running ``quiesce-host serve``, and the I/O gate behind it.

While a disk is served (NBD, FUSE or both) the serving process holds the disk's writer lock, so
nothing else can open it. Everything that must happen to the live disk goes through a unix
socket next to it, ``DISK/.serve.sock`` (mode 0600, peers checked with SO_PEERCRED), speaking
the agent's wire format (``agent/protocol.py``): one JSON object per line,

    {"execute": "snapshot-create", "arguments": {"name": "before-upgrade"}, "id": 1}
    {"return": {...}, "id": 1}   or   {"error": {"class": "...", "desc": "..."}, "id": 1}

Commands: ``ping``, ``status``, ``info`` (the engine's ``info``; on a VM's server, of the
disk named by ``disk`` if given), ``flush``,
``snapshot-create`` (name, description, consistency, report, artifacts), ``snapshot-update``
(the same record fields, after a quiesce's thaw),
``snapshot-list``, ``export`` (a snapshot to a raw file, progress in ``status``; deletes wait
for it; a VM's server exports the disk named by ``disk``), ``snapshot-delete`` (when the
merges it sets off copy at most ``LIVE_MERGE_LIMIT``, client I/O held meanwhile: the snapshot
just taken, say, which is how a failed quiesce takes it back), ``snapshot-revert`` (always
refused while serving: the clients would see the disk change under them). The client is
``host.serve.control_client``.

Every client I/O passes through an ``IOGate``: a snapshot waits until the requests in flight
are done, holds new ones back, flushes and switches the engine to the new delta, then lets
them go. A write is never split across the cut and every write acknowledged before the
snapshot was asked for is in it.

Errors: ``ServeError`` (exit 2) when the server cannot start (another one serves the disk);
every request gets a reply, an error reply naming the class (the engine's ``SnapshotNotFound``,
``Refused``, ``PauseTimeout``, ...) when it cannot be done.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent import protocol
from common.errors import QuiesceError
from host.serve.control_client import MAX_LINE, request, short_path, socket_path
from host.serve.device import BlockDevice, CutsUnderPause, Gate, OfDisks, SnapshotSide
from host.serve.device import IOGate as IOGate  # the gate behind the socket, for its users

logger = logging.getLogger(__name__)

IDLE = 600.0  # seconds a control connection may sit without a request
LIVE_MERGE_LIMIT = 64 * 1024 * 1024  # bytes a live delete may merge while client I/O waits
COMMANDS = (
    "ping",
    "status",
    "info",
    "flush",
    "snapshot-create",
    "snapshot-update",
    "snapshot-list",
    "snapshot-revert",
    "snapshot-delete",
    "export",
)

# error classes of the control protocol (beyond agent/protocol.py's BadRequest, ...)
REFUSED = "Refused"  # the operation is not safe while the disk is served
PAUSE_TIMEOUT_CLASS = "PauseTimeout"  # client I/O did not drain in time
UNSUPPORTED = "Unsupported"  # the served device has no such operation (raw file)


class ServeError(QuiesceError):
    """Root of the serving errors; ``code`` is stable, ``exit_code`` for the CLI."""

    code = "ServeError"
    exit_code = 2


class _CommandError(Exception):
    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


def _record_request(command: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``name`` and record fields of a snapshot-create / -update request, checked."""
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise _CommandError(protocol.BAD_REQUEST, f"{command} needs a string 'name'")
    unknown = set(args) - {"name", *protocol.RECORD_FIELDS}
    if unknown:
        raise _CommandError(protocol.BAD_REQUEST, f"unknown argument(s): {sorted(unknown)}")
    fields = {k: args[k] for k in protocol.RECORD_FIELDS if k in args}
    if "consistency" in fields and fields["consistency"] not in list(protocol.Consistency):
        raise _CommandError(
            protocol.BAD_REQUEST, f"consistency must be one of {', '.join(protocol.Consistency)}"
        )
    for key in ("report", "artifacts"):
        if fields.get(key) is not None and not isinstance(fields[key], dict):
            raise _CommandError(protocol.BAD_REQUEST, f"{key} must be an object")
    return name, fields


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 3)


# --- server --------------------------------------------------------------------------------------
class ControlServer:
    """Answers control requests for one served disk until ``shutdown()``."""

    def __init__(
        self,
        disk_folder: str | os.PathLike[str],
        disk: BlockDevice | SnapshotSide,
        gate: Gate,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.disk_path = Path(os.path.abspath(disk_folder))
        self.path = socket_path(disk_folder)
        self.disk = disk
        self.served: SnapshotSide | None = disk if isinstance(disk, SnapshotSide) else None
        self.gate = gate
        self.extra_status = status
        self.started = time.monotonic()
        self.last_snapshot: dict[str, Any] | None = None
        self._stopping = threading.Event()
        self._sock = self._listen()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one disk-changing command at a time
        self.export: dict[str, Any] | None = None  # the export running, with its progress

    def _listen(self) -> socket.socket:
        try:
            request(self.disk_path, "ping", timeout=2.0)
        except protocol.Unreachable:
            pass  # nobody answers: the socket, if any, is a dead server's
        except QuiesceError:
            raise ServeError(f"{self.path}: another server already serves this disk") from None
        else:
            raise ServeError(f"{self.path}: another server already serves this disk")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with short_path(self.path) as addr:
            try:
                os.unlink(addr)
            except FileNotFoundError:
                pass
            old = os.umask(0o177)
            try:
                sock.bind(addr)
            finally:
                os.umask(old)
        sock.listen(8)
        return sock

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="serve-control", daemon=True)
        self._thread.start()
        logger.info("control: listening on %s", self.path)

    def shutdown(self) -> None:
        self._stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._thread is not None:
            self._thread.join(5)
        try:
            with short_path(self.path) as addr:
                os.unlink(addr)
        except OSError:
            pass

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(
                target=self._serve, args=(conn,), daemon=True, name="serve-control-conn"
            ).start()

    def _peer_allowed(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.geteuid())

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if not self._peer_allowed(conn):
                conn.sendall(protocol.encode(protocol.failure(REFUSED, "peer uid not allowed")))
                return
            lines, pending = protocol.LineBuffer(MAX_LINE), list[bytes]()
            try:
                while True:
                    line = protocol.recv_line(conn, lines, pending, time.monotonic() + IDLE)
                    conn.sendall(protocol.encode(self.handle_line(line)))
            except protocol.ProtocolError as err:  # a line too long: say so and hang up
                conn.sendall(protocol.encode(protocol.failure(err.error_class, err.desc)))
            except (TimeoutError, OSError):
                return  # the client left, or was idle for IDLE seconds

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """One request line → one reply object; never raises."""
        try:
            req = protocol.parse_request(line, COMMANDS, MAX_LINE)
        except protocol.ProtocolError as err:
            return protocol.failure(err.error_class, err.desc, id=protocol.request_id(line))
        try:
            return protocol.success(self._handlers[req.execute](req.arguments), req.id)
        except _CommandError as err:
            return protocol.failure(err.error_class, err.desc, id=req.id)
        except QuiesceError as err:  # the engine's errors go back with their own class
            logger.warning("control: %s", err)
            return protocol.failure(err.code, str(err), id=req.id)
        except Exception as err:  # noqa: BLE001 - the handler's one broad catch: server lives on
            logger.exception("control: %s failed", req.execute)
            return protocol.failure(protocol.INTERNAL, str(err) or type(err).__name__, id=req.id)

    @property
    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "ping": lambda a: {},
            "status": self.cmd_status,
            "info": self.cmd_info,
            "flush": self.cmd_flush,
            "snapshot-create": self.cmd_snapshot_create,
            "snapshot-update": self.cmd_snapshot_update,
            "snapshot-list": self.cmd_snapshot_list,
            "snapshot-revert": self.cmd_snapshot_revert,
            "snapshot-delete": self.cmd_snapshot_delete,
            "export": self.cmd_export,
        }

    def cmd_status(self, args: dict[str, Any]) -> dict[str, Any]:
        status = {
            "pid": os.getpid(),
            "disk": str(self.disk_path),
            "size": self.disk.size,
            "paused": self.gate.is_paused,
            "pauses": self.gate.pauses,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "last_snapshot": self.last_snapshot,
            "export": dict(self.export) if self.export else None,
        }
        if self.extra_status is not None:
            status.update(self.extra_status())
        return status

    def cmd_flush(self, args: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        with self.gate.io():
            self.disk.flush()
        return {"flushed": True, "ms": round((time.monotonic() - t0) * 1000, 3)}

    def _engine(self, what: str) -> SnapshotSide:
        """The served disk's snapshot side; a raw image file has none (``Unsupported``)."""
        if self.served is None:
            raise _CommandError(UNSUPPORTED, f"the served device has no {what}")
        return self.served

    def cmd_snapshot_create(self, args: dict[str, Any]) -> dict[str, Any]:
        """Pause client I/O (on every disk of a VM), flush and switch, record, resume. The
        reply's ``drain_ms`` (until every disk was paused), ``switch_ms`` and ``paused_ms``
        are the whole cut's; a VM's adds ``disks``: each disk's ``paused_ms``, from its own
        pause to the common resume. A VM pauses around its switches only (its records are
        written before and after the pause: ``CutsUnderPause``), a disk around all of it."""
        name, fields = _record_request("snapshot-create", args)
        engine = self._engine("snapshots")
        marks: dict[str, Any] = {}

        @contextmanager
        def pause() -> Iterator[None]:
            marks["t0"] = time.monotonic()
            with self.gate.paused() as held:
                marks["t1"], marks["held"] = time.monotonic(), held
                yield
                marks["t2"] = time.monotonic()
            marks["t3"] = time.monotonic()

        record = {
            "description": str(fields.get("description", "")),
            "consistency": fields.get("consistency", "crash"),
            "report": fields.get("report"),
            "artifacts": fields.get("artifacts"),
        }
        with self._lock:
            try:
                if isinstance(engine, CutsUnderPause):
                    result = engine.snapshot_create_paused(name, **record, pause=pause)
                else:
                    with pause():
                        result = engine.snapshot_create(name, **record)
            except TimeoutError as err:
                raise _CommandError(PAUSE_TIMEOUT_CLASS, f"snapshot {name!r}: {err}") from err
        t0, t1, t2, t3, held = (marks[k] for k in ("t0", "t1", "t2", "t3", "held"))
        timing: dict[str, Any] = {
            "drain_ms": _ms(t0, t1),
            "switch_ms": _ms(t1, t2),
            "paused_ms": _ms(t1, t3),
        }
        if isinstance(held, dict):  # a VM: the first disk paused is held the longest
            timing["paused_ms"] = _ms(min(held.values(), default=t1), t3)
            timing["disks"] = {n: {"paused_ms": _ms(t, t3)} for n, t in held.items()}
        self.last_snapshot = {"name": name, **timing}
        logger.info("control: snapshot %r taken; I/O paused %.1f ms", name, timing["paused_ms"])
        return {"snapshot": result, **timing}

    def cmd_snapshot_list(self, args: dict[str, Any]) -> Any:
        return self._engine("snapshots").snapshot_list()

    def cmd_snapshot_revert(self, args: dict[str, Any]) -> Any:
        raise _CommandError(
            REFUSED,
            "revert is refused while the disk is served: the clients would see the disk change "
            "under them (a mounted filesystem would be corrupted); stop 'quiesce-host serve' "
            "(unmount first), then run 'quiesce-host snapshot revert'",
        )

    def cmd_snapshot_update(self, args: dict[str, Any]) -> dict[str, Any]:
        name, fields = _record_request("snapshot-update", args)
        update = self._engine("snapshots").snapshot_update
        with self._lock:  # metadata only: client I/O goes on
            return {"snapshot": update(name, **fields)}

    def cmd_snapshot_delete(self, args: dict[str, Any]) -> Any:
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise _CommandError(protocol.BAD_REQUEST, "snapshot-delete needs a string 'name'")
        delete = self._engine("snapshots").snapshot_delete
        with self._lock:
            if self.export is not None:
                raise _CommandError(
                    REFUSED,
                    f"snapshot {name!r}: an export of snapshot "
                    f"{self.export['snapshot']!r} is running and a delete may merge the layers "
                    "it reads; delete after it",
                )
            self._check_merge(name)
            t0 = time.monotonic()
            try:
                with self.gate.paused():
                    delete(name)
            except TimeoutError as err:
                raise _CommandError(PAUSE_TIMEOUT_CLASS, f"delete {name!r}: {err}") from err
        paused_ms = round((time.monotonic() - t0) * 1000, 3)
        logger.info("control: snapshot %r deleted; I/O paused %.1f ms", name, paused_ms)
        return {"deleted": name, "paused_ms": paused_ms}

    def cmd_export(self, args: dict[str, Any]) -> dict[str, Any]:
        """Flatten a snapshot to a raw file while the clients go on (see Disk.export_raw);
        progress in ``status``. The current state is refused: it changes under the export."""
        snapshot, out = args.get("snapshot"), args.get("out")
        if not isinstance(snapshot, str) or not snapshot:
            raise _CommandError(
                protocol.BAD_REQUEST,
                "export needs a 'snapshot': the served state changes while it is read; take a "
                "snapshot ('quiesce-host snapshot create') and export that",
            )
        if not isinstance(out, str) or not os.path.isabs(out):
            raise _CommandError(protocol.BAD_REQUEST, "export needs 'out', an absolute path")
        export = self._exporter(args.get("disk"))
        with self._lock:  # a delete may not start once this is set (see cmd_snapshot_delete)
            if self.export is not None:
                raise _CommandError(
                    REFUSED,
                    f"an export of {self.export['snapshot']!r} to "
                    f"{self.export['out']} is running already",
                )
            self.export = {"snapshot": snapshot, "out": out, "done": 0, "total": self.disk.size}
            if args.get("disk") is not None:
                self.export["disk"] = args["disk"]
        t0 = time.monotonic()
        try:
            export(out, snapshot, progress=self._export_progress)
        finally:
            with self._lock:
                self.export = None
        seconds = round(time.monotonic() - t0, 3)
        logger.info("control: exported snapshot %r to %s in %.1f s", snapshot, out, seconds)
        return {"exported": snapshot, "out": out, "seconds": seconds}

    def cmd_info(self, args: dict[str, Any]) -> dict[str, Any]:
        """The engine's ``info`` of what is served, or of the VM's disk named by ``disk``."""
        if args.get("disk") is None:
            return self._engine("info").info()
        return self._of_disks("info", args["disk"]).disk_info(args["disk"])

    def _exporter(self, disk: object) -> Callable[..., None]:
        """What ``export`` calls: the served disk's ``export_raw``, or for ``disk`` (a name)
        that disk's of the served VM."""
        if disk is None:
            return self._engine("export").export_raw
        side = self._of_disks("export", disk)
        return functools.partial(side.export_disk_raw, str(disk))

    def _of_disks(self, what: str, disk: object) -> OfDisks:
        """The served VM, for a request naming one of its disks; BadRequest on a disk."""
        side = self._engine(what)
        if not isinstance(disk, str) or not disk:
            raise _CommandError(protocol.BAD_REQUEST, "'disk' must be the name of a disk")
        if not isinstance(side, OfDisks):
            raise _CommandError(
                protocol.BAD_REQUEST, f"'disk': {self.disk_path} is one disk, not a VM"
            )
        return side

    def _export_progress(self, done: int, total: int) -> None:
        export = self.export
        if export is not None:
            export["done"], export["total"] = done, total

    def _check_merge(self, name: str) -> None:
        """A delete merges under the engine's lock, so client I/O waits for the whole merge:
        only short merges are done while serving."""
        cost = self._engine("snapshots").delete_cost(name)  # SnapshotNotFound goes back as is
        if cost <= LIVE_MERGE_LIMIT:
            return
        raise _CommandError(
            REFUSED,
            f"snapshot {name!r}: deleting it merges {cost / 2**20:.1f} MiB, more than the "
            f"{LIVE_MERGE_LIMIT // 2**20} MiB done while serving (every client waits for the "
            "merge); stop 'quiesce-host serve', then delete it",
        )
