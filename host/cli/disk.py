"""``quiesce-host disk create|info|check|export``: thin verbs over ``host.engine.disk.Disk``.

A disk of a VM (``quiesce-host vm create``) can be read, checked and exported here on its
own; ``disk check`` also reports where it disagrees with its VM's tree (``vm.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common.tables import table
from host.cli._common import DISK_HELP, Server, error, open_or_ask, parse_size, report_check
from host.cli.progress import Progress, human_bytes
from host.engine.check import check_folder
from host.engine.disk import Disk
from host.engine.vmcheck import member_problems
from host.engine.vmtree import is_vm, vm_of


def build(disk: argparse.ArgumentParser) -> None:
    """The sub-verbs of ``disk`` (main made its parser)."""
    sub = disk.add_subparsers(dest="disk_verb", metavar="VERB", required=True)

    p = sub.add_parser(
        "create",
        help="make a new disk folder, empty or from a raw image",
        description="Make DISK (an empty or new folder) with a flat base: zeros, or a copy of "
        "a raw image (--from; cloned where the filesystem can, else copied with its holes "
        "left holes; the image itself is never written).",
    )
    p.add_argument("disk", metavar="DISK", help="folder to create (must be empty)")
    p.add_argument(
        "--size",
        type=parse_size,
        help="virtual size, e.g. 64M or 20G (rounded up to 64 KiB); with --from, the "
        "image's size unless given (it may be larger, to grow the disk)",
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="IMAGE",
        help="start the disk as a copy of this raw image file or block device (an LVM "
        "volume, say; a qcow2 or VMDK is refused: qemu-img convert -O raw it first)",
    )
    p.set_defaults(func=run_create)

    p = sub.add_parser("info", help="the chain, the current writable file, the layers")
    p.add_argument("disk", metavar="DISK", help=DISK_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_info)

    p = sub.add_parser(
        "check",
        help="verify every file and link, report every problem "
        "(exit 1 if the disk still opens, else the code of what stops it)",
    )
    p.add_argument("disk", metavar="DISK", help=DISK_HELP)
    p.add_argument(
        "--relink",
        action="store_true",
        help="first re-point every delta at its parent from tree.json (hint and "
        "parentCID), e.g. after 'qemu-img commit' changed a parent's CID",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_check)

    p = sub.add_parser("export", help="flatten the current state or a snapshot to a raw image")
    p.add_argument("disk", metavar="DISK", help=DISK_HELP)
    p.add_argument(
        "out",
        metavar="OUT.raw",
        help="the raw image to write (OUT.raw.part until it is complete; zero runs left as holes)",
    )
    p.add_argument(
        "--snapshot",
        metavar="NAME",
        help="export this snapshot's state instead of the current one (on a served "
        "disk, the server does it while its clients go on)",
    )
    p.set_defaults(func=run_export)


def run_create(args: argparse.Namespace) -> int:
    if args.size is None and args.source is None:
        error("disk create needs --size, or --from IMAGE to take the image's size")
        return 2
    t0 = time.monotonic()
    progress = Progress("copy") if args.source else None
    with Disk.create(args.disk, args.size, source=args.source, progress=progress) as disk:
        made = f"created {disk.folder} ({human_bytes(disk.size)}, {disk.size} bytes)"
        if args.source:
            made += f" from {args.source} in {time.monotonic() - t0:.1f} s"
        print(made)
    return 0


def run_info(args: argparse.Namespace) -> int:
    def there(server: Server) -> dict[str, Any]:
        owner, which = _owner(args.disk, server)
        reply: dict[str, Any] = owner.ask("info", which)
        return reply

    info = open_or_ask(args.disk, lambda disk: disk.info(), there, readonly=True)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    print(f"disk       {info['folder']}  ({human_bytes(info['size'])})")
    print(f"current    {info['current']}")
    print(
        f"position   {info['position'] or '-'}  (chain depth {info['depth']} of "
        f"{info['max_depth']}, {info['snapshots']} snapshots)"
    )
    print()
    head = ("FILE", "PARENT", "SNAPSHOT", "CID", "ALLOCATED", "FILE SIZE")
    for line in table(head, (_layer_row(layer, info["current_layer"]) for layer in info["layers"])):
        print(line)
    for orphan in info["orphans"]:
        print(f"warning: {orphan} is in the folder but in no chain", file=sys.stderr)
    return 0


def _layer_row(layer: dict[str, Any], current: str) -> tuple[str, ...]:
    """One layer of ``disk info``: the current writable file is marked with a ``*``."""
    allocated = layer.get("allocated_bytes")
    return (
        ("*" if layer["file"] == current else " ") + layer["file"],
        layer["parent"] or "-",
        layer["snapshot"] or "-",
        layer["cid"],
        human_bytes(allocated) if allocated is not None else "(flat)",
        human_bytes(layer["file_bytes"]),
    )


def run_check(args: argparse.Namespace) -> int:
    if args.relink:
        for line in Disk.relink(args.disk):
            print(f"fixed: {line}")
    problems = check_folder(args.disk)  # DiskError only when there is nothing to check
    problems += member_problems(args.disk)  # a disk of a VM: does it agree with vm.json?
    return report_check(
        args.disk, problems, lambda: Disk.open(args.disk, readonly=True).close(), args.json
    )


def run_export(args: argparse.Namespace) -> int:
    t0 = time.monotonic()

    def here(disk: Disk) -> str:
        disk.export_raw(args.out, snapshot=args.snapshot, progress=Progress("export"))
        return ""

    def there(server: Server) -> str:
        if not args.snapshot:
            server.refuse(
                "a served disk's current state changes while it is read: "
                "take a snapshot and export it with --snapshot NAME"
            )
        owner, which = _owner(args.disk, server)
        _export_through_server(args, owner, which)
        return (
            f" by the server of the VM {owner.disk}" if which else " by the server holding the disk"
        )

    how = open_or_ask(args.disk, here, there, readonly=True)
    print(
        f"exported {args.snapshot or 'the current state'} to {args.out}{how} in "
        f"{time.monotonic() - t0:.1f} s"
    )
    return 0


EXPORT_TIMEOUT = 24 * 3600.0  # seconds; the server reports progress in the meantime


def _owner(folder: str, server: Server) -> tuple[Server, dict[str, str]]:
    """Who answers for a busy disk, and the arguments that name it: the disk's own server,
    or for a disk of a VM the VM's server with ``{"disk": NAME}`` (a served VM's disks have
    no control socket of their own; a disk's name in its VM is its folder's)."""
    owner = vm_of(folder)
    if owner is None or not is_vm(owner):
        return server, {}
    return Server(str(owner), server.busy), {"disk": Path(folder).name}


def _export_through_server(args: argparse.Namespace, server: Server, which: dict[str, str]) -> None:
    """The server holding the disk writes the file; its ``status`` gives the progress.
    ``which`` is ``{"disk": NAME}`` for a disk of a served VM."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["reply"] = server.ask(
                "export",
                {"snapshot": args.snapshot, "out": os.path.abspath(args.out), **which},
                timeout=EXPORT_TIMEOUT,
            )
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            result["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    progress = Progress(f"export (by the server of {args.disk})")
    total = 0
    while worker.is_alive():
        worker.join(timeout=0.5)
        export = (server.status() or {}).get("export")
        if export and export.get("snapshot") == args.snapshot:
            total = int(export["total"])
            progress(int(export["done"]), total)
    if "error" in result:
        raise result["error"]
    if total:  # a long export: finish the progress line
        progress(total, total)
