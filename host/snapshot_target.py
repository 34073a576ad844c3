"""Where a quiesced snapshot is taken: the engine directly, or the server that holds the disk.

A quiesced snapshot is created inside the frozen window, but what it must record (the thaw's
report, PostgreSQL's ``backup_label``, the held window, whether the thaw confirmed the hold) is
known only after the thaw. So a target can ``create`` (flush + switch to a new delta), then
``update`` the snapshot's record, or ``delete`` it when the quiesce failed.

- ``EngineTarget``: the disk is not served; we hold its writer lock for the whole cycle (opened
  before the freeze, so opening and checking the chain is not inside the window).
- ``ServedTarget``: ``quiesce-host serve`` holds the disk; create and delete go through its
  control socket (``host.serve_control``), which cuts between client writes.

Workarounds, until the engine and the server have them (see docs/snapshots.md): the engine has
no ``snapshot_update``, so ``EngineTarget`` replaces the entry in ``tree.json`` through
``host.tree.Tree`` under the lock it holds; the server has no ``snapshot-update`` command, so
``ServedTarget`` keeps the final record in ``DISK/.quiesce-records.json`` (atomic, fsynced),
which ``load_snapshot`` overlays and the next ``EngineTarget`` on the disk folds into
``tree.json``. Both use the real method as soon as it exists.

Raises: DiskError (engine), ServeError (server), SnapshotNotFound.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from agent import protocol
from host.disk import Disk, DiskBusy, DiskError
from host.durable import SnapshotNotFound
from host.serve_control import ServeError, ServeRequestFailed, request, socket_path
from host.tree import Tree

RECORDS = ".quiesce-records.json"
RECORD_KEYS = ("consistency", "report", "artifacts")


class Target(Protocol):
    """What the quiesce cycle needs from a disk."""

    kind: str

    def create(self, name: str, description: str, consistency: str, report: dict[str, Any],
               artifacts: dict[str, Any], timeout: float) -> dict[str, Any]: ...
    def update(self, name: str, fields: dict[str, Any]) -> None: ...
    def delete(self, name: str) -> str | None: ...
    def close(self) -> None: ...


class EngineTarget:
    """The engine's Disk, held (locked) by us for the whole cycle."""

    kind = "engine"

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        fold_records(disk)

    def create(self, name: str, description: str, consistency: str, report: dict[str, Any],
               artifacts: dict[str, Any], timeout: float) -> dict[str, Any]:
        t0 = time.monotonic()
        snap = self.disk.snapshot_create(name, description, consistency, report, artifacts)
        return {"snapshot": snap, "switch_ms": round((time.monotonic() - t0) * 1000, 3)}

    def update(self, name: str, fields: dict[str, Any]) -> None:
        update_in_engine(self.disk, name, fields)

    def delete(self, name: str) -> str | None:
        """Drop the snapshot (its delta merges back: the current state is kept)."""
        self.disk.snapshot_delete(name)
        return None

    def close(self) -> None:
        self.disk.close()


class ServedTarget:
    """A disk that ``quiesce-host serve`` holds: everything goes through its control socket."""

    kind = "served"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        request(folder, "ping", timeout=5.0)  # fail before freezing, not inside the window

    def create(self, name: str, description: str, consistency: str, report: dict[str, Any],
               artifacts: dict[str, Any], timeout: float) -> dict[str, Any]:
        reply = request(self.folder, "snapshot-create",
                        {"name": name, "description": description, "consistency": consistency,
                         "report": report, "artifacts": artifacts}, timeout=timeout)
        return reply if isinstance(reply, dict) else {"snapshot": reply}

    def update(self, name: str, fields: dict[str, Any]) -> None:
        try:
            request(self.folder, "snapshot-update", {"name": name, **fields}, timeout=30.0)
            return
        except ServeRequestFailed as err:
            if err.error_class != protocol.UNKNOWN_COMMAND:
                raise
        snap = _served_entry(self.folder, name)
        store_pending(self.folder, name, snap, fields)

    def delete(self, name: str) -> str | None:
        """Try to drop it; the reason when the server refuses (a snapshot the live state
        depends on cannot be merged while serving)."""
        try:
            request(self.folder, "snapshot-delete", {"name": name}, timeout=30.0)
        except ServeRequestFailed as err:
            return err.desc
        return None

    def close(self) -> None:
        pass


def open_target(folder: str | os.PathLike[str]) -> EngineTarget | ServedTarget:
    """The engine when the disk is free, the server's control socket when one holds it.

    Raises DiskBusy (locked by something that is not a server), DiskError, ServeError.
    """
    path = Path(folder)
    try:
        return EngineTarget(Disk.open(path))
    except DiskBusy:
        if not socket_path(path).exists():
            raise
    return ServedTarget(path)


# -- records --------------------------------------------------------------------------------
def update_in_engine(disk: Disk, name: str, fields: dict[str, Any]) -> None:
    """Replace the record fields of snapshot ``name`` in an open, locked disk."""
    fields = {k: v for k, v in fields.items() if k in RECORD_KEYS}
    native = getattr(disk, "snapshot_update", None)
    if native is not None:
        native(name, **fields)
        return
    tree = disk.tree.copy()
    tree.snapshot(name).update(fields)
    tree.save()  # atomic: temp file, fsync, rename, fsync the folder
    disk.tree = tree


def _served_entry(folder: Path, name: str) -> dict[str, Any]:
    for snap in Tree.load(folder).snapshots:
        if snap["name"] == name:
            return snap
    raise SnapshotNotFound(f"{folder}: no snapshot named {name!r}", folder)


def _records_path(folder: Path) -> Path:
    return folder / RECORDS


def _read_records(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads(_records_path(folder).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise DiskError(f"{_records_path(folder)}: unreadable ({err}); remove it to drop the "
                        "pending quiesce records", folder) from err
    return data if isinstance(data, dict) else {}


def _write_records(folder: Path, records: dict[str, Any]) -> None:
    path = _records_path(folder)
    if not records:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "w") as f:
        json.dump(records, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def store_pending(folder: Path, name: str, snap: dict[str, Any], fields: dict[str, Any]) -> None:
    """Keep the final record beside a served disk until the engine can take it."""
    records = _read_records(folder)
    records[name] = {"layer": snap.get("layer"), "created": snap.get("created"),
                     **{k: v for k, v in fields.items() if k in RECORD_KEYS}}
    _write_records(folder, records)


def _matching(snap: dict[str, Any], record: Any) -> bool:
    return (isinstance(record, dict) and record.get("layer") == snap.get("layer")
            and record.get("created") == snap.get("created"))


def fold_records(disk: Disk) -> None:
    """Move pending records into ``tree.json`` (we hold the disk's lock); drop stale ones."""
    if disk.readonly:
        return
    records = _read_records(disk.folder)
    if not records:
        return
    for name, record in records.items():
        snap = next((s for s in disk.tree.snapshots if s["name"] == name), None)
        if snap is not None and _matching(snap, record):
            update_in_engine(disk, name, record)
    _write_records(disk.folder, {})


def load_snapshot(folder: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """A snapshot's full record (with report and artifacts), served or not; read-only.

    ``tree.json`` is replaced atomically, so reading it without the lock is safe.
    Raises DiskError (not a disk), SnapshotNotFound.
    """
    path = Path(folder)
    tree = Tree.load(path)
    snap = dict(tree.snapshot(name))
    record = _read_records(path).get(name)
    if _matching(snap, record):
        snap.update({k: v for k, v in record.items() if k in RECORD_KEYS})
        snap["record_pending"] = True
    snap["parent"] = tree.named_ancestor(snap["layer"])
    return snap


__all__ = ["EngineTarget", "ServeError", "ServedTarget", "Target", "load_snapshot",
           "open_target", "update_in_engine"]
