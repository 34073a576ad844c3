"""``quiesce-host snapshot create|list|revert|delete|show|restore-artifacts``: thin verbs over
``host.engine.disk.Disk`` (or ``host.engine.vm.VM``) and ``host.snapshots``.

DISK is a disk folder or a VM folder (told apart by what it holds: a VM has ``vm.json``); on
a VM every verb acts on all of its disks as one snapshot (one tree, every disk cut at once).

When the disk is being served (``quiesce-host serve`` holds its lock), create, list and delete
go to the server through its control socket, which takes the snapshot at a clean cut
(``_common.open_or_ask``). ``create --quiesce ENDPOINT`` has the guest's agent freeze around
the cut (``host.snapshots.cycle.take``); without ``--quiesce`` it is a plain snapshot. A DISK that
starts with ``rbd:`` (a Ceph RBD group or image) goes to ``host/cli/rbd_snapshot.py``.

Exit codes: 0 ok, 1 warning (``--quiesce-mode preferred`` fell back to a crash-consistent
snapshot), 20 quiesce failed (required: nothing left behind), 21 not confirmed and not
deletable, 7/8/9 the agent unreachable / garbage / refused, and the engine's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.protocol import Consistency
from common.errors import QuiesceError
from common.files import atomic_write
from host.cli._common import EITHER_HELP, Server, error, open_either_or_ask
from host.cli.progress import Progress
from host.engine.disk import Disk
from host.engine.vm import VM
from host.snapshots.cycle import MODES, take
from host.snapshots.report import full
from host.snapshots.target import load_snapshot, open_target

TARGET_HELP = EITHER_HELP + "; or rbd:POOL/GROUP, rbd:POOL/IMAGE (Ceph RBD, see docs/rbd.md)"


def _rbd(disk: str) -> ModuleType | None:
    """The rbd: verbs, for a DISK that is an rbd: spec (loaded only then: it loads librados)."""
    if not disk.startswith("rbd:"):
        return None
    from host.cli import rbd_snapshot

    return rbd_snapshot


def build(snap: argparse.ArgumentParser) -> None:
    """The sub-verbs of ``snapshot`` (main made its parser)."""
    sub = snap.add_subparsers(dest="snapshot_verb", metavar="VERB", required=True)
    _add_create(sub)
    p = sub.add_parser("list", help="the snapshot tree, the current position marked")
    p.add_argument("disk", metavar="DISK", help=TARGET_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_list)
    _add_revert_and_delete(sub)
    p = sub.add_parser("show", help="a snapshot's record: consistency, timeline, writers")
    p.add_argument("disk", metavar="DISK", help="the disk or VM folder, or rbd:POOL/GROUP")
    p.add_argument("name", metavar="NAME", help="the snapshot")
    p.add_argument("--json", action="store_true", help="the whole record as JSON")
    p.set_defaults(func=run_show)
    p = sub.add_parser(
        "restore-artifacts",
        help="write a snapshot's backup_label / tablespace_map into a "
        "PostgreSQL data directory (the WAL-archive restore path)",
    )
    p.add_argument("disk", metavar="DISK", help="the disk or VM folder, or rbd:POOL/GROUP")
    p.add_argument("name", metavar="NAME", help="the snapshot whose backup_label to write")
    p.add_argument("datadir", metavar="DATADIR", help="the restored, mounted data directory")
    p.add_argument("--writer", help="the PostgreSQL writer's name when there are several")
    p.add_argument("--force", action="store_true", help="replace an existing backup_label")
    p.set_defaults(func=run_restore_artifacts)


def _add_create(sub: Any) -> None:
    p = sub.add_parser(
        "create",
        help="freeze the current state under NAME",
        description="Keep the current state under NAME: the writable layer becomes read-only "
        "and a new delta takes the writes. On a served disk the server cuts "
        "between client writes. On a VM every disk is cut at the same instant (a served VM "
        "pauses I/O on all its disks, switches every one, then resumes). With --quiesce "
        "the guest's agent freezes its applications and filesystems around the cut.",
    )
    p.add_argument("disk", metavar="DISK", help=TARGET_HELP)
    p.add_argument("name", metavar="NAME", help="1-128 printable characters, no '/'")
    p.add_argument("-d", "--description", default="", help="free text kept with it")
    p.add_argument(
        "--consistency",
        choices=list(Consistency),
        default="crash",
        help="the level to record without --quiesce (default crash); with "
        "--quiesce the agent's report decides",
    )
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument(
        "--quiesce",
        metavar="ENDPOINT",
        help="ask the agent at unix:PATH or vsock:CID:PORT to freeze around "
        "the snapshot (application-consistent), or a guest's qemu-ga at "
        "qemu-ga:unix:PATH (the host end of its org.qemu.guest_agent.0 port)",
    )
    p.add_argument(
        "--quiesce-mount",
        metavar="MOUNT",
        action="append",
        help="with a qemu-ga endpoint: freeze only this guest mount point (repeatable; "
        "guest-fsfreeze-freeze-list) instead of every filesystem",
    )
    p.add_argument(
        "--quiesce-mode",
        choices=MODES,
        default="required",
        help="required (default): a failed quiesce fails the snapshot; "
        "preferred: fall back to a crash-consistent snapshot",
    )
    p.set_defaults(func=run_create)


def _add_revert_and_delete(sub: Any) -> None:
    p = sub.add_parser(
        "revert",
        help="discard the current state and go back to NAME",
        description="Discard the current state (everything written since the position it "
        "started from) and start a new empty delta on NAME's state; other branches "
        "of the tree stay. On a VM every disk goes back (refused if a disk was added "
        "after NAME). Refused while the disk is served: stop the server (and "
        "the VM or mount using it) first.",
    )
    p.add_argument("disk", metavar="DISK", help=TARGET_HELP)
    p.add_argument("name", metavar="NAME", help="the snapshot to go back to")
    p.set_defaults(func=run_revert)

    p = sub.add_parser(
        "delete",
        help="delete NAME (merging its delta), or --all",
        description="Drop NAME; a delta no snapshot needs any more is merged into its parent "
        "(progress on stderr). On a served disk the server does it when the merge "
        "copies at most 64 MiB (clients wait for it) and refuses otherwise.",
    )
    p.add_argument("disk", metavar="DISK", help=TARGET_HELP)
    p.add_argument("name", metavar="NAME", nargs="?", help="the snapshot to delete")
    p.add_argument(
        "--all",
        action="store_true",
        help="delete every snapshot: merge the current state into the base",
    )
    p.set_defaults(func=run_delete)


# -- create ----------------------------------------------------------------------------------
def run_create(args: argparse.Namespace) -> int:
    if rbd := _rbd(args.disk):
        return int(rbd.run_create(args))
    if args.quiesce:
        return _create_quiesced(args)
    if args.quiesce_mode != "required":
        error("--quiesce-mode needs --quiesce ENDPOINT")
        return 2
    fields = {"name": args.name, "description": args.description, "consistency": args.consistency}

    def by_server(server: Server) -> Any:
        reply = server.ask("snapshot-create", fields)
        return reply.get("snapshot", reply) if isinstance(reply, dict) else reply

    snap = open_either_or_ask(
        args.disk,
        lambda disk: disk.snapshot_create(args.name, args.description, args.consistency),
        by_server,
    )
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        print(f"snapshot {args.name!r} created")
    return 0


def _create_quiesced(args: argparse.Namespace) -> int:
    if args.consistency != "crash":
        error("--consistency is measured with --quiesce, not given")
        return 2
    try:
        target = open_target(args.disk)
    except QuiesceError as err:  # the server does not answer, the disk cannot be opened
        error(f"{args.disk}: {err}")
        return err.exit_code
    try:
        outcome = take(
            target,
            args.name,
            args.quiesce,
            description=args.description,
            mode=args.quiesce_mode,
            mountpoints=args.quiesce_mount,
        )
    except QuiesceError as err:  # QuiesceFailed, the agent, the server, the engine
        error(str(err))
        return err.exit_code
    finally:
        target.close()
    record = outcome.shown()
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print("\n".join(full(record)))
    for warning in outcome.warnings:
        print(f"quiesce-host: WARNING: {warning}", file=sys.stderr)
    return 1 if outcome.warnings else 0


# -- list, revert, delete --------------------------------------------------------------------
def run_list(args: argparse.Namespace) -> int:
    if rbd := _rbd(args.disk):
        return int(rbd.run_list(args))
    snaps = open_either_or_ask(
        args.disk,
        lambda disk: disk.snapshot_list(),
        lambda server: server.ask("snapshot-list"),
        readonly=True,
    )
    if args.json:
        print(json.dumps(snaps, indent=2))
        return 0
    if not snaps:
        print("no snapshots (you are on the base)")
        return 0
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for s in snaps:
        by_parent.setdefault(s.get("parent"), []).append(s)
    for line in _tree_lines(by_parent, None, ""):
        print(line)
    return 0


def _tree_lines(
    by_parent: dict[str | None, list[dict[str, Any]]], parent: str | None, indent: str
) -> list[str]:
    """The snapshots under ``parent`` and their children, drawn as a tree."""
    lines = []
    kids = by_parent.get(parent, [])
    for i, s in enumerate(kids):
        last = i == len(kids) - 1
        branch = "" if parent is None else ("└─ " if last else "├─ ")
        here = "   <- you are here" if s.get("is_current_position") else ""
        desc = f'  "{s["description"]}"' if s.get("description") else ""
        lines.append(
            f"{indent}{branch}{s['name']}  {s.get('created', '')}  "
            f"{s.get('consistency', '')}{desc}{here}"
        )
        deeper = indent + ("" if parent is None else ("   " if last else "│  "))
        lines += _tree_lines(by_parent, s["name"], deeper)
    return lines


def run_revert(args: argparse.Namespace) -> int:
    if rbd := _rbd(args.disk):
        return int(rbd.run_revert(args))
    open_either_or_ask(
        args.disk,
        lambda disk: disk.snapshot_revert(args.name),
        # the server refuses, and says why not (and what to do)
        lambda server: server.ask("snapshot-revert", {"name": args.name}),
    )
    print(f"reverted to {args.name!r}; the previous current state was discarded")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    if rbd := _rbd(args.disk):
        return int(rbd.run_delete(args))
    if bool(args.all) == bool(args.name):
        error("give a snapshot NAME or --all")
        return 2
    if args.all:
        open_either_or_ask(
            args.disk,
            lambda disk: disk.snapshot_delete_all(progress=Progress("merging into the base")),
            lambda server: server.refuse(
                "'delete --all' merges every delta into the base, which "
                "cannot be done under a running server"
            ),
        )
        print("deleted all snapshots")
        return 0

    def here(disk: Disk | VM) -> None:
        disk.snapshot_delete(args.name, progress=Progress(f"merging {args.name}"))

    open_either_or_ask(
        args.disk, here, lambda server: server.ask("snapshot-delete", {"name": args.name})
    )
    print(f"snapshot {args.name!r} deleted")
    return 0


# -- show, restore-artifacts -----------------------------------------------------------------
def run_show(args: argparse.Namespace) -> int:
    if rbd := _rbd(args.disk):
        return int(rbd.run_show(args))
    snap = load_snapshot(args.disk, args.name)
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        print("\n".join(full(snap)))
    return 0


def _postgres_artifacts(snap: dict[str, Any], writer: str | None) -> tuple[str, dict[str, Any]]:
    found = {
        n: a
        for n, a in (snap.get("artifacts") or {}).items()
        if isinstance(a, dict) and a.get("backup_label")
    }
    if writer is not None:
        if writer not in found:
            raise LookupError(
                f"snapshot {snap['name']!r} has no backup_label from writer "
                f"{writer!r} (has: {', '.join(found) or 'none'})"
            )
        return writer, found[writer]
    if len(found) != 1:
        raise LookupError(
            f"snapshot {snap['name']!r} has "
            + (
                f"backup_labels from {', '.join(found)}: pick one with --writer"
                if found
                else "no backup_label (was it quiesced with a "
                "PostgreSQL writer, and did the thaw confirm?)"
            )
        )
    return next(iter(found.items()))


def _datadir_problem(datadir: Path, force: bool) -> str | None:
    """Why the labels cannot be written into ``datadir``, or None."""
    if not (datadir / "PG_VERSION").is_file():
        return (
            f"{datadir}: not a PostgreSQL data directory (no PG_VERSION); mount the "
            "restored disk and give its data directory"
        )
    if (datadir / "postmaster.pid").exists():
        return (
            f"{datadir}: postmaster.pid exists: stop the server first (the label is read at "
            "startup, and only by a server that starts from this backup)"
        )
    if (datadir / "backup_label").exists() and not force:
        return f"{datadir / 'backup_label'} exists already; --force replaces it"
    return None


def run_restore_artifacts(args: argparse.Namespace) -> int:
    rbd = _rbd(args.disk)
    snap = rbd.load(args.disk, args.name) if rbd else load_snapshot(args.disk, args.name)
    try:
        writer, arts = _postgres_artifacts(snap, args.writer)
    except LookupError as err:
        error(str(err))
        return 2
    datadir = Path(args.datadir)
    problem = _datadir_problem(datadir, args.force)
    if problem:
        error(problem)
        return 2
    files = {"backup_label": arts["backup_label"], "tablespace_map": arts.get("tablespace_map")}
    st = (datadir / "PG_VERSION").stat()
    for fname, text in files.items():
        if not text:
            continue
        path = datadir / fname
        atomic_write(path, text, 0o600, owner=(st.st_uid, st.st_gid))  # the server's owner
        print(f"wrote {path} ({len(text)} bytes, from {writer})")
    print(
        "next: configure restore_command (and a recovery target if wanted), touch "
        "recovery.signal, start the server; see docs/snapshots.md"
    )
    return 0
