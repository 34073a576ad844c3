"""``quiesce-host snapshot create|list|revert|delete|show|restore-artifacts``: thin verbs over
``host.engine.disk.Disk`` and ``host.snapshots``.

When the disk is being served (``quiesce-host serve`` holds its lock), create, list and delete
go to the server through its control socket, which takes the snapshot at a clean cut.

``install(verbs)`` extends the ``snapshot`` verb group that ``add_parser`` builds:
``create`` gains ``--quiesce ENDPOINT`` and ``--quiesce-mode`` (without ``--quiesce`` it runs
exactly as before), and two verbs are added. Exit codes: 0 ok, 1 warning (``preferred`` fell
back to a crash-consistent snapshot), 20 quiesce failed (required: nothing left behind), 21 not
confirmed and not deletable, 7/8/9 the agent unreachable / garbage / refused, and the engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from common.errors import QuiesceError
from host.cli._common import DISK_HELP, ask_server
from host.cli.progress import Progress
from host.engine.disk import CONSISTENCY, Disk, DiskBusy
from host.serve.control import ServeError
from host.snapshots.cycle import MODES, take
from host.snapshots.report import full
from host.snapshots.target import load_snapshot, open_target


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


def _subverbs(verbs: Any, name: str) -> Any:
    parser = verbs.choices[name]
    for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action
    raise LookupError(f"the {name!r} verb has no sub-verbs")


def install(verbs: Any) -> None:
    """Add the quiesce options and verbs to the ``snapshot`` group (after cli_snapshot)."""
    sub = _subverbs(verbs, "snapshot")
    create = sub.choices["create"]
    plain = create.get_default("func")
    create.add_argument(
        "--quiesce",
        metavar="ENDPOINT",
        help="ask the agent at unix:PATH or vsock:CID:PORT to freeze around "
        "the snapshot (application-consistent)",
    )
    create.add_argument(
        "--quiesce-mode",
        choices=MODES,
        default="required",
        help="required (default): a failed quiesce fails the snapshot; "
        "preferred: fall back to a crash-consistent snapshot",
    )
    create.set_defaults(func=lambda args: run_create_quiesced(args, plain))

    p = sub.add_parser("show", help="a snapshot's record: consistency, timeline, writers")
    p.add_argument("disk", metavar="DISK", help="the disk folder")
    p.add_argument("name", metavar="NAME", help="the snapshot")
    p.add_argument("--json", action="store_true", help="the whole record as JSON")
    p.set_defaults(func=run_show)

    p = sub.add_parser(
        "restore-artifacts",
        help="write a snapshot's backup_label / tablespace_map into a "
        "PostgreSQL data directory (the WAL-archive restore path)",
    )
    p.add_argument("disk", metavar="DISK", help="the disk folder")
    p.add_argument("name", metavar="NAME", help="the snapshot whose backup_label to write")
    p.add_argument("datadir", metavar="DATADIR", help="the restored, mounted data directory")
    p.add_argument("--writer", help="the PostgreSQL writer's name when there are several")
    p.add_argument("--force", action="store_true", help="replace an existing backup_label")
    p.set_defaults(func=run_restore_artifacts)


def _err(message: str) -> None:
    print(f"quiesce-host: error: {message}", file=sys.stderr)


def run_create_quiesced(args: argparse.Namespace, plain: Any) -> int:
    if not args.quiesce:
        if args.quiesce_mode != "required":
            _err("--quiesce-mode needs --quiesce ENDPOINT")
            return 2
        return int(plain(args))
    if args.consistency != "crash":
        _err("--consistency is measured with --quiesce, not given")
        return 2
    try:
        target = open_target(args.disk)
    except ServeError as err:
        _err(f"{args.disk}: {err}")
        return err.exit_code
    try:
        outcome = take(
            target, args.name, args.quiesce, description=args.description, mode=args.quiesce_mode
        )
    except QuiesceError as err:  # QuiesceFailed, the agent, the server, the engine
        _err(str(err))
        return err.exit_code
    finally:
        target.close()
    record = {**(outcome.snapshot or {}), **outcome.record()}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print("\n".join(full(record)))
    for warning in outcome.warnings:
        print(f"quiesce-host: WARNING: {warning}", file=sys.stderr)
    return 1 if outcome.warnings else 0


def run_show(args: argparse.Namespace) -> int:
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


def run_restore_artifacts(args: argparse.Namespace) -> int:
    snap = load_snapshot(args.disk, args.name)
    try:
        writer, arts = _postgres_artifacts(snap, args.writer)
    except LookupError as err:
        _err(str(err))
        return 2
    datadir = Path(args.datadir)
    version = datadir / "PG_VERSION"
    if not version.is_file():
        _err(
            f"{datadir}: not a PostgreSQL data directory (no PG_VERSION); mount the "
            "restored disk and give its data directory"
        )
        return 2
    if (datadir / "postmaster.pid").exists():
        _err(
            f"{datadir}: postmaster.pid exists: stop the server first (the label is read at "
            "startup, and only by a server that starts from this backup)"
        )
        return 2
    files = {"backup_label": arts["backup_label"], "tablespace_map": arts.get("tablespace_map")}
    if (datadir / "backup_label").exists() and not args.force:
        _err(f"{datadir / 'backup_label'} exists already; --force replaces it")
        return 2
    st = version.stat()
    for fname, text in files.items():
        if not text:
            continue
        path = datadir / fname
        tmp = datadir / f".{fname}.quiesce-new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
        print(f"wrote {path} ({len(text)} bytes, from {writer})")
    print(
        "next: configure restore_command (and a recovery target if wanted), touch "
        "recovery.signal, start the server; see docs/snapshots.md"
    )
    return 0
