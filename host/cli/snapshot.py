"""``quiesce-host snapshot create|list|revert|delete``: thin verbs over ``host.engine.disk.Disk``.

When the disk is being served (``quiesce-host serve`` holds its lock), create, list and delete
go to the server through its control socket, which takes the snapshot at a clean cut.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from host.cli._common import DISK_HELP, ask_server
from host.cli.progress import Progress
from host.engine.disk import CONSISTENCY, Disk, DiskBusy


def add_parser(verbs: Any) -> None:
    snap = verbs.add_parser("snapshot", help="create, list, revert and delete snapshots")
    sub = snap.add_subparsers(dest="snapshot_verb", metavar="VERB", required=True)

    p = sub.add_parser(
        "create",
        help="freeze the current state under NAME",
        description="Keep the current state under NAME: the writable layer becomes read-only "
        "and a new delta takes the writes. On a served disk the server cuts "
        "between client writes. With --quiesce the guest's agent freezes its "
        "applications and filesystems around the cut.",
    )
    p.add_argument("disk", metavar="DISK", help=DISK_HELP)
    p.add_argument("name", metavar="NAME", help="1-128 printable characters, no '/'")
    p.add_argument("-d", "--description", default="", help="free text kept with it")
    p.add_argument(
        "--consistency",
        choices=CONSISTENCY,
        default="crash",
        help="the level to record without --quiesce (default crash); with "
        "--quiesce the agent's report decides",
    )
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=run_create)

    p = sub.add_parser("list", help="the snapshot tree, the current position marked")
    p.add_argument("disk", metavar="DISK", help=DISK_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_list)

    p = sub.add_parser(
        "revert",
        help="discard the current state and go back to NAME",
        description="Discard the current state (everything written since the position it "
        "started from) and start a new empty delta on NAME's state; other branches "
        "of the tree stay. Refused while the disk is served: stop the server (and "
        "the VM or mount using it) first.",
    )
    p.add_argument("disk", metavar="DISK", help=DISK_HELP)
    p.add_argument("name", metavar="NAME", help="the snapshot to go back to")
    p.set_defaults(func=run_revert)

    p = sub.add_parser(
        "delete",
        help="delete NAME (merging its delta), or --all",
        description="Drop NAME; a delta no snapshot needs any more is merged into its parent "
        "(progress on stderr). On a served disk the server does it when the merge "
        "copies at most 64 MiB (clients wait for it) and refuses otherwise.",
    )
    p.add_argument("disk", metavar="DISK", help=DISK_HELP)
    p.add_argument("name", metavar="NAME", nargs="?", help="the snapshot to delete")
    p.add_argument(
        "--all",
        action="store_true",
        help="delete every snapshot: merge the current state into the base",
    )
    p.set_defaults(func=run_delete)


def run_create(args: argparse.Namespace) -> int:
    try:
        with Disk.open(args.disk) as disk:
            snap = disk.snapshot_create(args.name, args.description, args.consistency)
    except DiskBusy as busy:
        reply = ask_server(
            args.disk,
            "snapshot-create",
            {"name": args.name, "description": args.description, "consistency": args.consistency},
            busy,
        )
        snap = reply.get("snapshot", reply) if isinstance(reply, dict) else reply
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        print(f"snapshot {args.name!r} created")
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        with Disk.open(args.disk, readonly=True) as disk:
            snaps = disk.snapshot_list()
    except DiskBusy as busy:
        snaps = ask_server(args.disk, "snapshot-list", {}, busy)
    if args.json:
        print(json.dumps(snaps, indent=2))
        return 0
    if not snaps:
        print("no snapshots (you are on the base)")
        return 0
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for s in snaps:
        by_parent.setdefault(s.get("parent"), []).append(s)

    def show(parent: str | None, indent: str) -> None:
        kids = by_parent.get(parent, [])
        for i, s in enumerate(kids):
            last = i == len(kids) - 1
            branch = "" if parent is None else ("└─ " if last else "├─ ")
            here = "   <- you are here" if s.get("is_current_position") else ""
            desc = f'  "{s["description"]}"' if s.get("description") else ""
            print(
                f"{indent}{branch}{s['name']}  {s.get('created', '')}  "
                f"{s.get('consistency', '')}{desc}{here}"
            )
            show(s["name"], indent + ("" if parent is None else ("   " if last else "│  ")))

    show(None, "")
    return 0


def run_revert(args: argparse.Namespace) -> int:
    try:
        with Disk.open(args.disk) as disk:
            disk.snapshot_revert(args.name)
    except DiskBusy as busy:  # the server says why not (and what to do)
        ask_server(args.disk, "snapshot-revert", {"name": args.name}, busy)
    print(f"reverted to {args.name!r}; the previous current state was discarded")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.name):
        print("quiesce-host: error: give a snapshot NAME or --all", file=sys.stderr)
        return 2
    try:
        with Disk.open(args.disk) as disk:
            if args.all:
                disk.snapshot_delete_all(progress=Progress("merging into the base"))
            else:
                disk.snapshot_delete(args.name, progress=Progress(f"merging {args.name}"))
    except DiskBusy as busy:
        if args.all:
            raise DiskBusy(
                f"{busy}; 'delete --all' merges every delta into the base, which "
                "cannot be done under a running server",
                busy.path,
            ) from busy
        ask_server(args.disk, "snapshot-delete", {"name": args.name}, busy)
    print("deleted all snapshots" if args.all else f"snapshot {args.name!r} deleted")
    return 0
