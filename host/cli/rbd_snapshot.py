"""``quiesce-host snapshot ...`` on an ``rbd:POOL/GROUP`` or ``rbd:POOL/IMAGE`` target.

``host/cli/snapshot.py`` hands a verb here when its DISK argument starts with ``rbd:``; the
arguments are the same. The store is ``host.snapshots.rbd.RbdStore``; the quiesced create is
the same cycle as for the engine (``host.snapshots.cycle.take``) over an ``RbdTarget``.
Exit codes as for a disk: 0, 1 (preferred fell back to crash), 7 (the cluster does not
answer), 15/16 (no such snapshot / exists), 17 (revert refused: an image is open), 20/21.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from common.errors import QuiesceError
from host.cli._common import error
from host.snapshots.cycle import take
from host.snapshots.rbd import RbdStore, RbdTarget
from host.snapshots.report import full


def _header(snap: dict[str, Any]) -> str:
    images = ", ".join(snap.get("images") or []) or "?"
    return (
        f"snapshot {snap.get('name')!r}  created {snap.get('created') or '?'}  "
        f"{snap.get('state', 'complete')}  {snap.get('kind', '')} {snap.get('target', '')} "
        f"[{images}]"
    )


def show_lines(snap: dict[str, Any]) -> list[str]:
    """``report.full`` with a header that names the images instead of a layer."""
    lines = [_header(snap), *full(snap)[1:]]
    if not snap.get("recorded", True):
        lines.append("(no record: this snapshot was not taken by quiesce-host)")
    return lines


def run_create(args: argparse.Namespace) -> int:
    if args.quiesce:
        if args.consistency != "crash":
            error("--consistency is measured with --quiesce, not given")
            return 2
        return _create_quiesced(args)
    if args.quiesce_mode != "required":
        error("--quiesce-mode needs --quiesce ENDPOINT")
        return 2
    with RbdStore(args.disk) as store:
        # librbd's quiesce notification stays on: a quiesce watcher (rbd-watch) may act
        snap = store.snapshot_create(
            args.name, args.description, args.consistency, skip_quiesce=False
        )
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        print(f"snapshot {args.name!r} created ({len(snap['images'])} images, {snap['cut_ms']} ms)")
    return 0


def _create_quiesced(args: argparse.Namespace) -> int:
    try:
        target = RbdTarget(RbdStore(args.disk))
    except QuiesceError as err:  # no binding, no cluster, no such group
        error(str(err))
        return err.exit_code
    try:
        outcome = take(
            target, args.name, args.quiesce, description=args.description, mode=args.quiesce_mode
        )
        record = target.store.snapshot(args.name) if outcome.snapshot else outcome.shown()
    except QuiesceError as err:
        error(str(err))
        return err.exit_code
    finally:
        target.close()
    print(json.dumps(record, indent=2) if args.json else "\n".join(show_lines(record)))
    for warning in outcome.warnings:
        print(f"quiesce-host: WARNING: {warning}", file=sys.stderr)
    return 1 if outcome.warnings else 0


def run_list(args: argparse.Namespace) -> int:
    with RbdStore(args.disk) as store:
        snaps = store.snapshot_list()
    if args.json:
        print(json.dumps(snaps, indent=2))
        return 0
    if not snaps:
        print(f"no snapshots of {store.spec}")
        return 0
    for s in snaps:
        desc = f'  "{s["description"]}"' if s.get("description") else ""
        state = "" if s["state"] == "complete" else f"  ({s['state'].upper()})"
        print(f"{s['name']}  {s.get('created') or '?'}  {s['consistency']}{desc}{state}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    with RbdStore(args.disk) as store:
        snap = store.snapshot(args.name)
    print(json.dumps(snap, indent=2) if args.json else "\n".join(show_lines(snap)))
    return 0


def load(disk: str, name: str) -> dict[str, Any]:
    """A snapshot's record (for restore-artifacts)."""
    with RbdStore(disk) as store:
        return store.snapshot(name)


def run_revert(args: argparse.Namespace) -> int:
    with RbdStore(args.disk) as store:
        store.snapshot_revert(args.name)
        count = len(store.image_names())
    print(f"rolled back {count} image(s) to {args.name!r}; what was written since is discarded")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.name):
        error("give a snapshot NAME or --all")
        return 2
    with RbdStore(args.disk) as store:
        names = [s["name"] for s in store.snapshot_list()] if args.all else [args.name]
        for name in names:
            store.snapshot_delete(name)
            print(f"snapshot {name!r} deleted")
    if args.all and not names:
        print("no snapshots to delete")
    return 0
