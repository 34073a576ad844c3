"""``snapshot create --quiesce``, ``snapshot show`` and ``snapshot restore-artifacts``.

``install(verbs)`` extends the ``snapshot`` verb group that ``host.cli.snapshot`` builds:
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
from host.snapshots.cycle import MODES, take
from host.snapshots.report import full
from host.snapshots.target import load_snapshot, open_target


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
    create.set_defaults(func=lambda args: run_create(args, plain))

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


def run_create(args: argparse.Namespace, plain: Any) -> int:
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
    except QuiesceError as err:  # the server does not answer, the disk cannot be opened
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
    record = outcome.shown()
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
