"""Where a quiesced snapshot is taken: the engine directly, or the server that holds the disk.

A quiesced snapshot is created inside the frozen window, but what it must record (the thaw's
report, PostgreSQL's ``backup_label``, the held window, whether the thaw confirmed the hold) is
known only after the thaw. So a target can ``create`` (flush + switch to a new delta), then
``update`` the snapshot's record, or ``delete`` it when the quiesce failed.

- ``EngineTarget``: the disk (or VM) is not served; we hold its writer lock for the whole
  cycle (opened before the freeze, so opening and checking the chain is not inside the
  window).
- ``ServedTarget``: ``quiesce-host serve`` holds the disk; create and delete go through its
  control socket (``host.serve.control``), which cuts between client writes.

The final record goes in with ``Disk.snapshot_update`` (the server's ``snapshot-update``); a
failed quiesce takes its snapshot back with ``snapshot_delete``, which merges only what was
written since the switch (the server allows such short live merges, see ``LIVE_MERGE_LIMIT``).

Raises: DiskError (engine), the protocol's Unreachable/Refused (server), SnapshotNotFound.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from agent import protocol
from host.engine.disk import Disk
from host.engine.errors import DiskBusy
from host.engine.tree import Tree
from host.engine.vm import VM, open_any, vm_snapshot_record
from host.engine.vmtree import is_vm
from host.serve.control_client import request, socket_path


class Target(Protocol):
    """What the quiesce cycle needs from a disk."""

    kind: str

    def create(
        self,
        name: str,
        description: str,
        consistency: str,
        report: dict[str, Any],
        artifacts: dict[str, Any],
        timeout: float,
    ) -> dict[str, Any]: ...
    def update(self, name: str, fields: dict[str, Any]) -> None: ...
    def delete(self, name: str) -> str | None: ...
    def close(self) -> None: ...


class EngineTarget:
    """The engine's Disk (or VM: every disk cut at once), held (locked) by us for the
    whole cycle."""

    kind = "engine"

    def __init__(self, disk: Disk | VM) -> None:
        self.disk = disk

    def create(
        self,
        name: str,
        description: str,
        consistency: str,
        report: dict[str, Any],
        artifacts: dict[str, Any],
        timeout: float,
    ) -> dict[str, Any]:
        t0 = time.monotonic()
        snap = self.disk.snapshot_create(name, description, consistency, report, artifacts)
        return {"snapshot": snap, "switch_ms": round((time.monotonic() - t0) * 1000, 3)}

    def update(self, name: str, fields: dict[str, Any]) -> None:
        self.disk.snapshot_update(name, **_record(fields))

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

    def create(
        self,
        name: str,
        description: str,
        consistency: str,
        report: dict[str, Any],
        artifacts: dict[str, Any],
        timeout: float,
    ) -> dict[str, Any]:
        reply = request(
            self.folder,
            "snapshot-create",
            {
                "name": name,
                "description": description,
                "consistency": consistency,
                "report": report,
                "artifacts": artifacts,
            },
            timeout=timeout,
        )
        return reply if isinstance(reply, dict) else {"snapshot": reply}

    def update(self, name: str, fields: dict[str, Any]) -> None:
        request(self.folder, "snapshot-update", {"name": name, **_record(fields)}, timeout=30.0)

    def delete(self, name: str) -> str | None:
        """Try to drop it; the reason when the server refuses (it merges only a snapshot
        just taken with little written since while serving)."""
        try:
            request(self.folder, "snapshot-delete", {"name": name}, timeout=30.0)
        except protocol.Refused as err:
            return err.desc
        return None

    def close(self) -> None:
        pass


def open_target(folder: str | os.PathLike[str]) -> EngineTarget | ServedTarget:
    """The engine when the disk is free, the server's control socket when one holds it.

    Raises DiskBusy (locked by something that is not a server), DiskError, Unreachable.
    """
    path = Path(folder)
    try:
        return EngineTarget(open_any(path))
    except DiskBusy:
        if not socket_path(path).exists():
            raise
    return ServedTarget(path)


# -- records --------------------------------------------------------------------------------
def _record(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k in protocol.RECORD_FIELDS}


def load_snapshot(folder: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """A snapshot's full record (with report and artifacts) of a disk or a VM, served or
    not; read-only. ``tree.json`` and ``vm.json`` are replaced atomically, so reading them
    without the lock is safe. Raises DiskError (not a disk), SnapshotNotFound.
    """
    if is_vm(Path(folder)):
        return vm_snapshot_record(Path(folder), name)
    tree = Tree.load(Path(folder))
    snap = dict(tree.snapshot(name))
    snap["parent"] = tree.named_ancestor(snap["layer"])
    return snap


__all__ = ["EngineTarget", "ServedTarget", "Target", "load_snapshot", "open_target"]
