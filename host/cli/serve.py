"""``quiesce-host serve DISK (--nbd HOST:PORT | --fuse MOUNTPOINT)``: serve a disk live.

DISK may be a VM folder (``quiesce-host vm create``): every disk of it is served from this one
process, one NBD export per disk (by its name) and one FUSE file per disk (``NAME.raw``), each
disk behind its own I/O gate, and a snapshot through the control socket ``VM/.serve.sock``
pauses all of them together (``host.serve.device.GateGroup``): one cut for every disk.

A thin verb over ``host.serve.nbd``, ``host.serve.fuse`` and ``host.serve.control``: it opens the
disk (taking its writer lock), puts every client request through one I/O gate, starts the control
socket ``DISK/.serve.sock`` and the servers asked for (both at once is fine: they share the
gate), prints where it serves, and stops cleanly on SIGTERM or SIGINT (FUSE: unmount first,
then NBD clients are hung up on, then the disk is flushed and closed).

``host.cli.main`` has ``build(parser)`` declare its arguments; ``run_serve(args)``
returns the exit code (0 after a clean stop, the error's ``exit_code`` otherwise).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from common.errors import QuiesceError
from host.serve.control import ControlServer, ServeError
from host.serve.device import Gate, GatedDevice, GateGroup, IOGate, RawFile
from host.serve.nbd import NBDServer, parse_hostport

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def build(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``serve`` (main made its parser)."""
    parser.description = (
        "Serve the current state of DISK read-write over NBD (for qemu, qemu-img, nbdinfo) "
        "and/or as MOUNTPOINT/disk.raw through FUSE (for a loop mount). While it runs, "
        "take snapshots through the control socket DISK/.serve.sock "
        "('quiesce-host snapshot create' does). DISK may be a VM folder: every disk is "
        "served, one NBD export per disk by its name (nbd://HOST:PORT/NAME) and one file "
        "MOUNTPOINT/NAME.raw per disk, and a snapshot pauses I/O on all disks, switches every "
        "one and resumes: one cut for all. Stops cleanly on SIGTERM/SIGINT."
    )
    parser.add_argument(
        "disk", metavar="DISK", help="the disk folder, a VM folder (or a raw image file)"
    )
    parser.add_argument("--nbd", metavar="HOST:PORT", help="serve NBD here, e.g. 127.0.0.1:10809")
    parser.add_argument(
        "--fuse", metavar="MOUNTPOINT", help="mount MOUNTPOINT/disk.raw (a VM: NAME.raw per disk)"
    )
    parser.add_argument("--readonly", action="store_true", help="refuse every write")
    parser.add_argument(
        "--export-name",
        default="",
        help="NBD export name of a disk (default: empty; a VM's exports are its disks' names)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow NBD on a non-loopback address (NBD has no authentication)",
    )
    parser.set_defaults(func=run_serve)


def open_device(path: str, readonly: bool) -> Any:
    """The engine's VM or Disk for a folder, a RawFile for a plain image file."""
    if os.path.isfile(path):
        return RawFile(path, readonly=readonly)
    if not os.path.isdir(path):
        raise ServeError(f"{path}: no such disk folder or image file")
    from host.engine.vm import open_any  # the engine; imported here so a raw file needs none

    return open_any(path, readonly=readonly)


def _gated(device: Any) -> tuple[Gate, dict[str, GatedDevice]]:
    """The gate the control socket pauses and the gated devices to serve, by export name:
    one gate and device (named by the caller), or a VM's, one gate per disk, grouped."""
    from host.engine.vm import VM

    if not isinstance(device, VM):
        gate = IOGate()
        return gate, {"": GatedDevice(device, gate)}
    gates = {name: IOGate() for name in device.disks}
    disks = {name: GatedDevice(d, gates[name]) for name, d in device.disks.items()}
    return GateGroup(gates), disks


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Threads started inside inherit a mask without the stop signals: the main thread gets
    them (libfuse's loop waits there for them)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _say(message: str) -> None:
    print(message, flush=True)


def run_serve(args: argparse.Namespace) -> int:
    if not args.nbd and not args.fuse:
        print(
            "quiesce-host serve: give --nbd HOST:PORT, --fuse MOUNTPOINT or both", file=sys.stderr
        )
        return 2
    try:
        nbd_addr = parse_hostport(args.nbd) if args.nbd else None
        device = open_device(args.disk, args.readonly)
    except QuiesceError as err:  # a bad address, no such disk, the engine's errors
        print(f"quiesce-host serve: {err}", file=sys.stderr)
        return err.exit_code
    try:
        return _serve(args, device, nbd_addr)
    finally:
        try:
            device.flush()
        finally:
            device.close()


def _serve(args: argparse.Namespace, device: Any, nbd_addr: tuple[str, int] | None) -> int:
    gate, exports = _gated(device)
    one = "" in exports
    nbd_server: NBDServer | None = None
    serving: list[dict[str, Any]] = []

    def status() -> dict[str, Any]:
        io = exports[""].stats if one else {n: d.stats for n, d in exports.items()}
        out: dict[str, Any] = {"readonly": args.readonly, "serving": serving, "io": io}
        if nbd_server is not None:
            out["nbd"] = {**nbd_server.stats, "active": nbd_server.active_connections}
        return out

    control_dir = args.disk if os.path.isdir(args.disk) else None
    try:
        with _signals_blocked():
            control = ControlServer(control_dir or args.disk, device, gate, status)
            control.start()
            if nbd_addr is not None:
                nbd_server = NBDServer(
                    exports[""] if one else exports,
                    *nbd_addr,
                    name=args.export_name,
                    description=f"quiesce-host {'disk' if one else 'VM'} "
                    f"{os.path.abspath(args.disk)}",
                    readonly=args.readonly,
                    allow_remote=args.allow_remote,
                )
                nbd_server.start()
    except QuiesceError as err:
        print(f"quiesce-host serve: {err}", file=sys.stderr)
        return err.exit_code
    try:
        _say(f"control socket {control.path}")
        if nbd_server is not None:
            for uri in nbd_server.uris:
                serving.append({"kind": "nbd", "uri": uri})
                _say(f"serving {args.disk} over NBD at {uri}")
        if args.fuse:
            from host.serve.fuse import FILE_NAME  # the FUSE binding: loaded for --fuse only

            files = {FILE_NAME: exports[""]} if one else {f"{n}.raw": d for n, d in exports.items()}
            return _run_fuse(args, files, serving)
        return _wait_for_signal()
    finally:
        if nbd_server is not None:
            nbd_server.shutdown()
        control.shutdown()
        _say("stopped")


def _run_fuse(
    args: argparse.Namespace, files: dict[str, GatedDevice], serving: list[dict[str, Any]]
) -> int:
    from host.serve.fuse import FuseServeError, serve_fuse

    def ready() -> None:
        for name in files:
            path = os.path.join(os.path.abspath(args.fuse), name)
            serving.append({"kind": "fuse", "file": path})
            _say(f"serving {args.disk} as {path}")

    try:
        serve_fuse(
            files,
            args.fuse,
            readonly=args.readonly,
            on_ready=ready,
            fsname=f"quiesce:{os.path.abspath(args.disk)}",
        )
    except FuseServeError as err:
        print(f"quiesce-host serve: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def _wait_for_signal() -> int:
    stop = threading.Event()
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        stop.set()

    previous: dict[int, Callable[..., Any] | int | None] = {}
    for stop_signal in STOP_SIGNALS:
        previous[stop_signal] = signal.signal(stop_signal, handler)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    logger.info("serve: stopping on %s", signal.Signals(received[0]).name)
    return 0
