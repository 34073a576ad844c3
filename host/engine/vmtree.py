"""A VM's snapshot tree: ``VM/vm.json``, one record per VM snapshot over every disk.

A VM is a folder of engine disks (``VM/NAME/``, each a ``Disk`` with its own ``tree.json``)
and this one file, replaced atomically, like VMware's ``.vmsd`` over a VM's disks::

    {"format": "quiesce-vm/1", "id": "5f0c...",
     "disks": [{"name": "root", "added": "..."}, {"name": "wal", "added": "..."}],
     "snapshots": [{"name": "nightly", "created": "...", "description": "",
                    "consistency": "application", "report": {...}, "artifacts": {...},
                    "layers": {"root": "disk.vmdk", "wal": "disk-000001.vmdk"}}]}

A VM snapshot is a disk snapshot of the same name on every disk it lists in ``layers`` (the
layer file that disk's snapshot names); a disk added after a snapshot is not in its
``layers``: it did not exist then. The record (report, artifacts, consistency) is the VM's;
the disks keep a short one of their own. Disks are never removed, so the first disk is in
every snapshot: its tree gives the VM's parent links and current position.

Each member disk holds ``vm-disk.json`` (``{"vm": ID, "name": NAME}``), so a disk folder
copied in from another VM is told apart.

Raises CorruptFile (a damaged vm.json), SnapshotNotFound, SnapshotExists, DiskError (a bad
snapshot or disk name, a bad consistency level).
"""

from __future__ import annotations

import copy
import os
import re
import time
from pathlib import Path
from typing import Any

from agent.protocol import Consistency
from host.engine.durable import read_json, write_json
from host.engine.errors import CorruptFile, DiskError, SnapshotExists, SnapshotNotFound
from host.engine.sparse import MAX_CAPACITY
from host.engine.tree import SNAPSHOT_NAME

VM_TREE = "vm.json"
VM_FORMAT = "quiesce-vm/1"
MEMBER = "vm-disk.json"
DISK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RECORD_KEYS = ("description", "consistency", "report", "artifacts")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def is_vm(folder: str | Path) -> bool:
    """Whether ``folder`` is a VM (it holds ``vm.json``) rather than a disk."""
    return (Path(folder) / VM_TREE).is_file()


def vm_of(disk_folder: str | Path) -> Path | None:
    """The VM folder a disk folder belongs to (its ``vm-disk.json``), or None."""
    folder = Path(disk_folder)
    return folder.parent if (folder / MEMBER).exists() else None


class VmTree:
    """The parsed, validated ``vm.json``."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.path = path
        self.id: str = data["id"]
        self.disks: list[dict[str, Any]] = [dict(d) for d in data["disks"]]
        self.snapshots: list[dict[str, Any]] = copy.deepcopy(data["snapshots"])
        self.validate()

    @classmethod
    def new(cls, folder: Path) -> VmTree:
        return cls({"id": os.urandom(8).hex(), "disks": [], "snapshots": []}, folder / VM_TREE)

    @classmethod
    def load(cls, folder: Path) -> VmTree:
        path = folder / VM_TREE
        try:
            data = read_json(path)
        except FileNotFoundError as err:
            raise CorruptFile(
                f"{path}: missing: {folder} is not a VM made by quiesce-host "
                "(create one with 'quiesce-host vm create')",
                path,
            ) from err
        if not isinstance(data, dict) or data.get("format") != VM_FORMAT:
            raise CorruptFile(f"{path}: not a {VM_FORMAT} tree", path)
        for key, kind in (("id", str), ("disks", list), ("snapshots", list)):
            if not isinstance(data.get(key), kind):
                raise CorruptFile(f"{path}: '{key}' is missing or not a {kind.__name__}", path)
        return cls(data, path)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": VM_FORMAT,
            "id": self.id,
            "disks": copy.deepcopy(self.disks),
            "snapshots": copy.deepcopy(self.snapshots),
        }

    def copy(self) -> VmTree:
        return VmTree(self.to_json(), self.path)

    def save(self) -> None:
        self.validate()
        write_json(self.path, self.to_json())

    def validate(self) -> None:
        p = self.path
        names: list[str] = []
        for d in self.disks:
            if not isinstance(d, dict) or not isinstance(d.get("name"), str):
                raise CorruptFile(f"{p}: a disk entry has no name", p)
            if not DISK_NAME.match(d["name"]) or d["name"] in names:
                raise CorruptFile(f"{p}: disk name {d['name']!r} is not a plain, unique name", p)
            names.append(d["name"])
        seen: set[str] = set()
        for snap in self.snapshots:
            if not isinstance(snap, dict) or not isinstance(snap.get("name"), str):
                raise CorruptFile(f"{p}: a snapshot entry has no name", p)
            if snap["name"] in seen:
                raise CorruptFile(f"{p}: snapshot {snap['name']!r} appears twice", p)
            seen.add(snap["name"])
            layers = snap.get("layers")
            if not isinstance(layers, dict) or not all(isinstance(v, str) for v in layers.values()):
                raise CorruptFile(f"{p}: snapshot {snap['name']!r} has no 'layers' object", p)
            for disk in layers:
                if disk not in names:
                    raise CorruptFile(
                        f"{p}: snapshot {snap['name']!r} names disk {disk!r}, "
                        "which is not a disk of this VM",
                        p,
                    )

    # -- queries --------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        return self.path.parent

    def disk_names(self) -> list[str]:
        return [d["name"] for d in self.disks]

    def snapshot(self, name: str) -> dict[str, Any]:
        for snap in self.snapshots:
            if snap["name"] == name:
                return snap
        raise SnapshotNotFound(
            f"{self.folder}: the VM has no snapshot named {name!r} "
            "(see 'quiesce-host snapshot list')",
            self.path,
        )

    def has(self, name: str) -> bool:
        return any(s["name"] == name for s in self.snapshots)

    # -- changes: each returns a new, checked tree that the caller saves -------------------

    def check_new_snapshot(self, name: str, consistency: str) -> None:
        """Raise what taking snapshot ``name`` at level ``consistency`` would be refused for."""
        if not SNAPSHOT_NAME.match(name):
            raise DiskError(
                f"{self.folder}: snapshot name {name!r} must be 1-128 printable characters "
                "without '/'",
                self.folder,
            )
        check_consistency(self.folder, consistency)
        if self.has(name):
            raise SnapshotExists(
                f"{self.folder}: the VM has a snapshot named {name!r} already", self.folder
            )
        if not self.disks:
            raise DiskError(
                f"{self.folder}: the VM has no disks yet (add one with 'quiesce-host vm add-disk')",
                self.folder,
            )

    def taking(self, name: str, record: dict[str, Any], layers: dict[str, str]) -> VmTree:
        """The tree with snapshot ``name`` over the disk layers ``layers``."""
        after = self.copy()
        entry = {"name": name, "created": now(), **record, "layers": dict(layers)}
        after.snapshots.append(entry)
        return after

    def without(self, name: str) -> VmTree:
        self.snapshot(name)
        after = self.copy()
        after.snapshots = [s for s in after.snapshots if s["name"] != name]
        return after

    def adding(self, disk: str) -> VmTree:
        after = self.copy()
        after.disks.append({"name": disk, "added": now()})
        return after

    def updating(self, name: str, fields: dict[str, Any]) -> VmTree:
        """The tree with the ``fields`` given (not None) replaced in ``name``'s record."""
        if fields.get("consistency") is not None:
            check_consistency(self.folder, fields["consistency"])
        after = self.copy()
        after.snapshot(name).update(
            {k: v for k, v in fields.items() if v is not None and k in RECORD_KEYS}
        )
        return after

    def synced(self, layer_of: dict[str, dict[str, str]]) -> VmTree:
        """The tree with each snapshot's layers as the disks name them now (a merge on a
        disk moves a snapshot to the merged layer); ``layer_of[disk][snapshot]``. A layer a
        disk does not have is kept as it is, for the check to report."""
        after = self.copy()
        for snap in after.snapshots:
            for disk in snap["layers"]:
                layer = layer_of.get(disk, {}).get(snap["name"])
                if layer is not None:
                    snap["layers"][disk] = layer
        return after


def check_consistency(folder: Path, consistency: str) -> None:
    if consistency not in list(Consistency):
        raise DiskError(
            f"{folder}: consistency {consistency!r} must be one of {', '.join(Consistency)}",
            folder,
        )


def read_member(disk_folder: Path) -> dict[str, Any] | None:
    """The disk's ``vm-disk.json`` ({"vm", "name"}), None if it has none. A damaged one is a
    CorruptFile."""
    path = disk_folder / MEMBER
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("vm", "name")):
        raise CorruptFile(f"{path}: not a VM membership record ('vm' and 'name')", path)
    return data


def write_member(disk_folder: Path, vm_id: str, name: str) -> None:
    write_json(disk_folder / MEMBER, {"vm": vm_id, "name": name})


def check_new_disk(folder: Path, name: str, size: int, taken: list[str]) -> None:
    """Refuse a new disk ``name`` of ``size`` bytes in VM ``folder`` (``taken``: its disks)."""
    if not DISK_NAME.match(name):
        raise DiskError(
            f"{folder}: disk name {name!r} must be 1-64 letters, digits, '_' or '-' "
            "(it names the disk's folder)",
            folder,
        )
    if name in taken or (folder / name).exists():
        raise DiskError(f"{folder}: the VM has a disk {name!r} already", folder / name)
    if size <= 0 or size > MAX_CAPACITY:
        raise DiskError(
            f"{folder}: disk {name!r}: size {size} must be positive and at most "
            f"{MAX_CAPACITY} bytes (2 TiB)",
            folder,
        )
