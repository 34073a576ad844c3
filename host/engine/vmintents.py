"""The VM's intent record, ``VM/intent.json``: one per VM operation, over every disk.

A VM operation writes its intent (atomically) before it touches the first disk, runs the
disk operations one disk after the other (each with its own ``DISK/intent.json``, finished or
undone when that disk is opened), saves ``vm.json`` and removes the intent. ``VM.open`` opens
every disk (which settles each disk's own intent) and then settles the VM's::

    VmCreate     vm_create     name new       vm.json names it: done; else the disks that
                                              took it delete it again, and a new delta
                                              no disk tree names goes (rolled back)
    VmRevert     vm_revert     name before    each disk still on its layer of ``before``
                                              is reverted (rolled forward)
    VmDelete     vm_delete     name           each disk that still has it deletes it, then
                                              vm.json drops it (rolled forward)
    VmDeleteAll  vm_delete_all                each disk with a delta merges all into its
                                              base, then vm.json has none (rolled forward)
    VmAddDisk    vm_add_disk   name           vm.json lists it: done; else the folder goes

Only a create is rolled back: taking the snapshot back on a disk that took it drops the
name, and the new delta is merged into the layer below (a served VM's clients may have
written into it between the resume and vm.json: those writes are kept, as every delete keeps
the current state). Revert and delete have already discarded or overwritten state on the
first disk they reached, so they can only be finished.

Each record is checked when read: a damaged one is a CorruptFile naming intent.json.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from common import files
from host.engine.durable import read_json, unlink_durably, write_json
from host.engine.errors import CorruptFile
from host.engine.names import safe_name
from host.engine.vmtree import DISK_NAME, VmTree

if TYPE_CHECKING:
    from host.engine.chain import Progress
    from host.engine.disk import Disk

VM_INTENT = "intent.json"
Disks = dict[str, "Disk"]


def layers_now(disks: Disks) -> dict[str, dict[str, str]]:
    """``{disk: {snapshot: layer}}`` as the disks' trees say now."""
    return {n: {s["name"]: s["layer"] for s in d.tree.snapshots} for n, d in disks.items()}


def _done(tree: VmTree, disks: Disks) -> VmTree:
    """Save ``tree`` with the layers the disks have now, and clear the intent."""
    after = tree.synced(layers_now(disks))
    if after.to_json() != VmTree.load(tree.folder).to_json():
        after.save()
    clear_vm_intent(tree.folder)
    return after


@dataclass(frozen=True)
class VmCreate:
    """snapshot create on every disk, then vm.json names it. ``new`` is each disk's new
    delta: this intent stands for the disks' own create intents (``Disk.switch_for_vm``),
    which a cut would otherwise write and remove on every disk while I/O waits."""

    op: ClassVar[str] = "vm_create"
    name: str
    new: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"op": self.op, "name": self.name, "new": dict(self.new)}

    def roll(self, tree: VmTree, disks: Disks, progress: Progress | None = None) -> VmTree:
        """Back, unless vm.json names the snapshot already: the disks that took it drop it,
        and a new delta that a disk's tree does not name (the crash came before its tree
        was saved) is removed, as a disk's own create intent would."""
        if not tree.has(self.name):
            for name, disk in disks.items():
                if any(s["name"] == self.name for s in disk.tree.snapshots):
                    disk.snapshot_delete(self.name)
                elif name in self.new and self.new[name] not in disk.tree.layers:
                    unlink_durably(disk.folder / self.new[name])
        return _done(tree, disks)


@dataclass(frozen=True)
class VmRevert:
    """snapshot revert on every disk; ``before`` is each disk's writable layer before."""

    op: ClassVar[str] = "vm_revert"
    name: str
    before: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"op": self.op, "name": self.name, "before": dict(self.before)}

    def roll(self, tree: VmTree, disks: Disks, progress: Progress | None = None) -> VmTree:
        """Forward: revert each disk that still writes into the layer it had before."""
        for name, layer in self.before.items():
            if disks[name].tree.current == layer:
                disks[name].snapshot_revert(self.name)
        return _done(tree, disks)


@dataclass(frozen=True)
class VmDelete:
    """snapshot delete on every disk that has it, then vm.json drops it."""

    op: ClassVar[str] = "vm_delete"
    name: str

    def record(self) -> dict[str, Any]:
        return {"op": self.op, "name": self.name}

    def roll(self, tree: VmTree, disks: Disks, progress: Progress | None = None) -> VmTree:
        for disk in disks.values():
            if any(s["name"] == self.name for s in disk.tree.snapshots):
                disk.snapshot_delete(self.name, progress)
        return _done(tree.without(self.name) if tree.has(self.name) else tree, disks)


@dataclass(frozen=True)
class VmDeleteAll:
    """snapshot delete --all on every disk, then vm.json has no snapshot."""

    op: ClassVar[str] = "vm_delete_all"

    def record(self) -> dict[str, Any]:
        return {"op": self.op}

    def roll(self, tree: VmTree, disks: Disks, progress: Progress | None = None) -> VmTree:
        for disk in disks.values():
            if disk.tree.snapshots or len(disk.tree.layers) > 1:
                disk.snapshot_delete_all(progress)
        after = tree.copy()
        after.snapshots = []
        return _done(after, disks)


@dataclass(frozen=True)
class VmAddDisk:
    """A new disk folder ``name`` is made, then vm.json lists it."""

    op: ClassVar[str] = "vm_add_disk"
    name: str

    def record(self) -> dict[str, Any]:
        return {"op": self.op, "name": self.name}

    def roll(self, tree: VmTree, disks: Disks, progress: Progress | None = None) -> VmTree:
        """Back, unless vm.json lists the disk: the half-made folder is removed."""
        if self.name not in tree.disk_names():
            remove_disk_folder(tree.folder / self.name)
        return _done(tree, disks)


VmIntent = VmCreate | VmRevert | VmDelete | VmDeleteAll | VmAddDisk


def remove_disk_folder(folder: Path) -> None:
    """Remove a disk folder an interrupted add-disk left, durably."""
    if folder.exists():
        shutil.rmtree(folder)
        files.fsync_dir(folder.parent)


def _parse(record: dict[str, Any], path: Path) -> VmIntent:
    op = record.get("op")
    name = record.get("name")
    if op == VmDeleteAll.op:
        return VmDeleteAll()
    if not isinstance(name, str):
        raise CorruptFile(f"{path}: malformed {op} record ('name' is missing)", path)
    if op == VmCreate.op:
        return VmCreate(name, _layer_map(record, "new", path))
    if op == VmRevert.op:
        before = record.get("before")
        if not isinstance(before, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in before.items()
        ):
            raise CorruptFile(f"{path}: malformed {op} record ('before')", path)
        return VmRevert(name, dict(before))
    if op == VmAddDisk.op and not DISK_NAME.match(name):
        raise CorruptFile(f"{path}: malformed {op} record (disk name {name!r})", path)
    kinds: dict[str, Callable[[str], VmIntent]] = {
        VmDelete.op: VmDelete,
        VmAddDisk.op: VmAddDisk,
    }
    if op not in kinds:
        raise CorruptFile(f"{path}: unknown VM operation {op!r}", path)
    return kinds[op](name)


def _layer_map(record: dict[str, Any], key: str, path: Path) -> dict[str, str]:
    """``{disk: layer file}`` of a record, each a plain name of this VM's disks' files."""
    value = record.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and DISK_NAME.match(k) and isinstance(v, str) for k, v in value.items()
    ):
        raise CorruptFile(f"{path}: malformed {record.get('op')} record ({key!r})", path)
    return {k: safe_name(path.parent / k, v, "layer", path) for k, v in value.items()}


def read_vm_intent(folder: Path) -> VmIntent | None:
    """The pending VM intent, or None. A damaged record is a CorruptFile."""
    path = folder / VM_INTENT
    try:
        record = read_json(path, "the intent record")
    except FileNotFoundError:
        return None
    if not isinstance(record, dict):
        raise CorruptFile(f"{path}: the intent record is not an object", path)
    return _parse(record, path)


def write_vm_intent(folder: Path, intent: VmIntent) -> None:
    write_json(folder / VM_INTENT, intent.record())


def clear_vm_intent(folder: Path) -> None:
    unlink_durably(folder / VM_INTENT)
