"""``quiesce-host vm create|add-disk|info|check``: thin verbs over ``host.engine.vm.VM``.

A VM is a folder of disks with one snapshot tree (``vm.json``) over them; ``snapshot
create|list|show|revert|delete`` take a VM folder as well as a disk folder and act on every
disk of it as one (``host/cli/snapshot.py``), and ``serve VM`` serves every disk from one
process (``host/cli/serve.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from common.tables import table
from host.cli._common import VM_HELP, Server, error, parse_size, report_check
from host.cli.progress import Progress, human_bytes
from host.engine.errors import DiskBusy
from host.engine.vm import VM
from host.engine.vmcheck import check_vm_folder


def _disk_spec(text: str) -> tuple[str, int | None]:
    """``NAME:SIZE`` (``wal:8G``) → (name, bytes); ``NAME`` alone → (name, None), the size
    of its ``--from`` image."""
    name, sep, size = text.partition(":")
    if not name or (sep and not size):
        raise argparse.ArgumentTypeError(f"not NAME:SIZE: {text!r} (e.g. wal:8G)")
    return name, parse_size(size) if sep else None


def _image_spec(text: str) -> tuple[str, str]:
    """``NAME=IMAGE`` (``root=debian.raw``) → (name, path)."""
    name, sep, image = text.partition("=")
    if not sep or not name or not image:
        raise argparse.ArgumentTypeError(f"not NAME=IMAGE: {text!r} (e.g. root=debian.raw)")
    return name, image


def build(vm: argparse.ArgumentParser) -> None:
    """The sub-verbs of ``vm`` (main made its parser)."""
    sub = vm.add_subparsers(dest="vm_verb", metavar="VERB", required=True)

    p = sub.add_parser(
        "create",
        help="make a new VM folder: one disk per --disk and one snapshot tree over them",
        description="Make VM (an empty or new folder) with one engine disk per --disk, in "
        "VM/NAME/, and the VM's snapshot tree VM/vm.json. Snapshots of the VM are taken, "
        "listed, reverted and deleted on every disk as one ('quiesce-host snapshot ... VM'), "
        "and 'quiesce-host serve VM' cuts every disk at the same instant.",
    )
    p.add_argument("vm", metavar="VM", help="folder to create (must be empty)")
    p.add_argument(
        "--disk",
        dest="disks",
        metavar="NAME[:SIZE]",
        type=_disk_spec,
        action="append",
        required=True,
        help="a disk: its name (letters, digits, '_', '-'; it names the folder) and virtual "
        "size, e.g. --disk root:20G --disk wal:8G (repeat; at least one); a disk with "
        "--from may leave the size out to take its image's",
    )
    p.add_argument(
        "--from",
        dest="sources",
        metavar="NAME=IMAGE",
        type=_image_spec,
        action="append",
        default=[],
        help="start disk NAME as a copy of this raw image file or block device (repeat; a "
        "qcow2 or VMDK is refused: qemu-img convert -O raw it first); the other disks start "
        "empty",
    )
    p.set_defaults(func=run_create)

    p = sub.add_parser(
        "add-disk",
        help="add an empty disk to a VM",
        description="Add a disk NAME to VM, empty or a copy of a raw image (--from). It did "
        "not exist at the VM's earlier snapshots: they do not name it, deleting them leaves "
        "it alone, and a revert to one of them is refused. Not while the VM is served.",
    )
    p.add_argument("vm", metavar="VM", help=VM_HELP)
    p.add_argument("name", metavar="NAME", help="the new disk's name (names its folder)")
    p.add_argument(
        "--size",
        type=parse_size,
        help="virtual size, e.g. 8G; with --from, the image's size unless given",
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="IMAGE",
        help="start the disk as a copy of this raw image file or block device (never written)",
    )
    p.set_defaults(func=run_add_disk)

    p = sub.add_parser("info", help="the VM's disks, their current files, its position")
    p.add_argument("vm", metavar="VM", help=VM_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_info)

    p = sub.add_parser(
        "check",
        help="check every disk and that each agrees with vm.json "
        "(exit 1 if the VM still opens, else the code of what stops it)",
        description="Report every problem of every disk ('disk check') and every way a disk "
        "disagrees with the VM's tree: a disk folder missing, a disk of another VM, a disk "
        "of another snapshot history, a snapshot or layer vm.json names that a disk lacks. "
        "Changes nothing.",
    )
    p.add_argument("vm", metavar="VM", help=VM_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_check)


def run_create(args: argparse.Namespace) -> int:
    sources = dict(args.sources)
    if len(sources) < len(args.sources):
        error("vm create: --from names a disk twice")
        return 2
    t0 = time.monotonic()
    with VM.create(
        args.vm, args.disks, sources=sources, progress=lambda name: Progress(f"copy {name}")
    ) as vm:
        for d in vm.info()["disks"]:
            image = f" from {sources[d['name']]}" if d["name"] in sources else ""
            print(f"created disk {d['name']} in {d['folder']} ({human_bytes(d['size'])}){image}")
        print(f"created VM {vm.folder} ({len(vm.disks)} disks) in {time.monotonic() - t0:.1f} s")
    return 0


def run_add_disk(args: argparse.Namespace) -> int:
    if args.size is None and args.source is None:
        error("vm add-disk needs --size, or --from IMAGE to take the image's size")
        return 2
    t0 = time.monotonic()
    progress = Progress(f"copy {args.name}") if args.source else None
    with VM.open(args.vm) as vm:
        disk = vm.add_disk(args.name, args.size, source=args.source, progress=progress)
        image = f" from {args.source} in {time.monotonic() - t0:.1f} s" if args.source else ""
        print(f"added disk {args.name} in {disk.folder} ({human_bytes(disk.size)}){image}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    try:
        with VM.open(args.vm, readonly=True) as vm:
            info = vm.info()
    except DiskBusy as busy:  # served: the server answers
        info = Server(args.vm, busy).ask("info")
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    print(f"vm         {info['folder']}  ({len(info['disks'])} disks, id {info['vm']})")
    print(
        f"position   {info['position'] or '-'}  (chain depth {info['depth']} of "
        f"{info['max_depth']}, {info['snapshots']} snapshots)"
    )
    print()
    head = ("DISK", "SIZE", "CURRENT FILE", "DEPTH", "SNAPSHOTS", "ADDED")
    for line in table(head, (_disk_row(d) for d in info["disks"])):
        print(line)
    return 0


def _disk_row(d: dict[str, Any]) -> tuple[str, ...]:
    return (
        d["name"],
        human_bytes(d["size"]),
        d["current_layer"],
        str(d["depth"]),
        str(d["snapshots"]),
        d.get("added") or "-",
    )


def run_check(args: argparse.Namespace) -> int:
    problems = check_vm_folder(args.vm)  # DiskError only when there is nothing to check
    return report_check(
        args.vm, problems, lambda: VM.open(args.vm, readonly=True).close(), args.json
    )
