"""A VM: a folder of engine disks with one snapshot tree over them, cut at the same instant.

``VM.create(folder, [(name, size), ...])`` makes ``VM/vm.json`` and one ``Disk`` per name in
``VM/NAME/``; ``VM.open(folder)`` locks the VM (``VM/.lock``) and every disk, finishes or
rolls back a VM operation a crash interrupted (``vmintents``) and refuses a VM whose disks
disagree with its tree (``vmcheck``). The snapshot API is the ``Disk``'s, acting on every disk
as one (see DESIGN.md "A VM is a folder of disks"):

- ``snapshot_create`` takes every disk's lock, so no write through any of them lands between
  the first switch and the last, flushes and switches every disk (side by side, a thread
  each), lets go, and records. A
  server that has paused and flushed its clients on all disks calls just this: it does no
  I/O beyond the engine's own durable writes;
- ``snapshot_revert``, ``snapshot_delete`` and ``snapshot_delete_all`` do the disk operation
  on every disk that has the snapshot, under one VM intent (finished at the next open);
- the record (description, consistency, the agent's report and artifacts) is the VM's, in
  ``vm.json``; ``snapshot_update`` replaces it (and the level and description on the disks);
- a disk added after a snapshot did not exist then: deleting that snapshot leaves the disk
  alone, reverting to it is refused. At most 32 snapshots in a chain, as on a disk.

Errors: what ``Disk`` raises, and VmMismatch (disks and tree disagree), ForeignFile (a disk of
another VM), DiskError (a revert to before a disk existed, a bad disk name), DiskBusy.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any

from host.engine.chain import Progress
from host.engine.disk import Disk, new_disk_size
from host.engine.durable import FolderLock, unlink_durably
from host.engine.errors import ChainTooDeep, DiskError, ReadOnly
from host.engine.tree import MAX_CHAIN, Tree
from host.engine.vmcheck import disagreements, examine_vm, membership
from host.engine.vmintents import (
    VM_INTENT,
    VmAddDisk,
    VmCreate,
    VmDelete,
    VmDeleteAll,
    VmIntent,
    VmRevert,
    clear_vm_intent,
    read_vm_intent,
    remove_disk_folder,
    write_vm_intent,
)
from host.engine.vmtree import (
    RECORD_KEYS,
    VmTree,
    check_new_disk,
    is_vm,
    vm_of,
    write_member,
)

__all__ = ["VM", "open_any", "vm_snapshot_record"]

TEMP_FILE = re.compile(r"^\.(vm\.json|intent\.json)\.tmp-\d+$")


class VM:
    """A VM folder: ``vm.json`` and a disk folder per disk. Use ``create``/``open``."""

    def __init__(self, folder: Path, readonly: bool, lock: FolderLock, tree: VmTree) -> None:
        self.folder = folder
        self.readonly = readonly
        self.tree = tree
        self.disks: dict[str, Disk] = {}
        self._flock: FolderLock | None = lock
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None  # a thread per disk for the cut
        self._pool_size = 0

    # -- life-cycle -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        folder: str | Path,
        disks: Iterable[tuple[str, int | None]],
        *,
        preallocate: bool = True,
        sources: Mapping[str, str | Path] | None = None,
        progress: Callable[[str], Progress | None] | None = None,
    ) -> VM:
        """Make a VM with the disks ``(name, size)`` given (at least one), all checked first.
        ``sources`` maps a disk's name to the raw image its base starts as a copy of (see
        ``Disk.create``; a size of None takes the image's), and ``progress(name)`` gives the
        callback that follows that copy; the other disks start empty."""
        folder = Path(folder)
        images = {name: Path(image) for name, image in (sources or {}).items()}
        wanted = [
            (name, new_disk_size(folder / name, size, images.get(name))) for name, size in disks
        ]
        if not wanted:
            raise DiskError(f"{folder}: a VM needs at least one disk", folder)
        for i, (name, size) in enumerate(wanted):
            check_new_disk(folder, name, size, [n for n, _ in wanted[:i]])
        unknown = sorted(set(images) - {name for name, _ in wanted})
        if unknown:
            raise DiskError(f"{folder}: an image for no disk of the VM: {unknown[0]!r}", folder)
        folder.mkdir(parents=True, exist_ok=True)
        if any(not p.name.startswith(".") for p in folder.iterdir()):
            raise DiskError(f"{folder}: not empty; a new VM needs an empty folder", folder)
        lock = FolderLock(folder, shared=False)
        try:
            VmTree.new(folder).save()
        finally:
            lock.release()
        vm = cls.open(folder)
        try:
            for name, size in wanted:
                vm.add_disk(
                    name,
                    size,
                    preallocate=preallocate,
                    source=images.get(name),
                    progress=progress(name) if progress and name in images else None,
                )
        except BaseException:
            vm.close()
            raise
        return vm

    @classmethod
    def open(cls, folder: str | Path, readonly: bool = False) -> VM:
        """Lock and open the VM and every disk; settle an interrupted VM operation.

        Raises CorruptFile (vm.json), VmMismatch, ForeignFile, DiskBusy, what Disk.open does.
        """
        folder = Path(folder)
        if not is_vm(folder):
            raise DiskError(f"{folder}: not a VM folder (no vm.json)", folder)
        lock = FolderLock(folder, shared=readonly)
        try:
            vm = cls(folder, readonly, lock, VmTree.load(folder))
        except BaseException:
            lock.release()
            raise
        try:
            vm._load()
        except BaseException:
            vm.close(flush=False)
            raise
        return vm

    def _load(self) -> None:
        if not self.readonly:
            stale = [p for p in self.folder.iterdir() if TEMP_FILE.match(p.name)]
            unlink_durably(*stale)
        intent = read_vm_intent(self.folder)
        if intent is not None and self.readonly:
            raise DiskError(
                f"{self.folder / VM_INTENT}: an interrupted VM operation ({intent.op}) is "
                "pending; open the VM read-write once to finish it",
                self.folder / VM_INTENT,
            )
        for name in self.tree.disk_names():  # every disk checked before any is opened
            wrong = membership(self.tree, name)
            if wrong is not None:
                raise wrong
        for name in self.tree.disk_names():
            self.disks[name] = Disk.open(self.folder / name, self.readonly)
        if intent is not None:
            self.tree = intent.roll(self.tree, self.disks)
        found = disagreements(self.tree, {n: d.tree for n, d in self.disks.items()})
        if found:
            more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
            raise type(found[0])(f"{found[0]}{more}", found[0].path)

    def __enter__(self) -> VM:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, flush: bool = True) -> None:
        """Close every disk (each flushes) and let go of the VM. Every disk is closed and
        every lock released even when one fails; the first failure is raised then, unless
        ``flush`` is False (a failed open, whose own error is the one to tell)."""
        with self._lock:
            first: BaseException | None = None
            for disk in self.disks.values():
                try:
                    disk.close()
                except BaseException as err:  # noqa: BLE001 - the others are closed first
                    first = first or err
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            if self._flock is not None:
                self._flock.release()
                self._flock = None
            if first is not None and (flush or not isinstance(first, DiskError)):
                raise first

    def flush(self) -> None:
        for disk in self.disks.values():
            disk.flush()

    def _writable(self) -> None:
        if self._flock is None:
            raise DiskError(f"{self.folder}: the VM is closed", self.folder)
        if self.readonly:
            raise ReadOnly(f"{self.folder}: opened read-only", self.folder)

    def _finish_pending(self) -> None:
        """A VM operation that failed part-way (NoSpace) is finished before the next one."""
        intent = read_vm_intent(self.folder)
        if intent is not None:
            self.tree = intent.roll(VmTree.load(self.folder), self.disks)

    def _run(self, intent: VmIntent, progress: Progress | None = None) -> None:
        write_vm_intent(self.folder, intent)
        self.tree = intent.roll(self.tree, self.disks, progress)

    # -- disks ----------------------------------------------------------------------------

    def add_disk(
        self,
        name: str,
        size: int | None,
        *,
        preallocate: bool = True,
        source: str | Path | None = None,
        progress: Progress | None = None,
    ) -> Disk:
        """A new disk ``name`` of ``size`` bytes, empty or (``source``) a copy of a raw image
        (a size of None takes the image's; ``progress`` follows the copy). It did not exist
        at the VM's earlier snapshots: they do not name it, and reverting to one of them is
        refused."""
        with self._lock:
            self._writable()
            self._finish_pending()
            size = new_disk_size(self.folder / name, size, None if source is None else Path(source))
            check_new_disk(self.folder, name, size, self.tree.disk_names())
            write_vm_intent(self.folder, VmAddDisk(name))
            try:
                disk = Disk.create(
                    self.folder / name,
                    size,
                    preallocate=preallocate,
                    source=source,
                    progress=progress,
                )
                try:
                    write_member(disk.folder, self.tree.id, name)
                except BaseException:
                    disk.close()
                    raise
            except DiskError:
                remove_disk_folder(self.folder / name)
                clear_vm_intent(self.folder)
                raise
            after = self.tree.adding(name)
            after.save()
            clear_vm_intent(self.folder)
            self.tree = after
            self.disks[name] = disk
            return disk

    # -- snapshots ------------------------------------------------------------------------

    def snapshot_create(
        self,
        name: str,
        description: str = "",
        consistency: str = "crash",
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Cut every disk at one instant under ``name``: with every disk's lock held, flush
        and switch each to a new delta (the disks side by side), let go of the disks, then
        record the snapshot in vm.json.

        Everything that can refuse is checked on every disk before the first switch; a disk
        that fails to switch (NoSpace) has the others take theirs back. Raises
        SnapshotExists, ChainTooDeep, NoSpace (nothing changed), DiskError.
        """
        return self.snapshot_create_paused(
            name, description, consistency, report, artifacts, pause=nullcontext
        )

    def snapshot_create_paused(
        self,
        name: str,
        description: str = "",
        consistency: str = "crash",
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        *,
        pause: Callable[[], AbstractContextManager[object]],
    ) -> dict[str, Any]:
        """``snapshot_create`` with the switch of every disk, and only that, inside
        ``pause()``: a server holds its clients' I/O on every disk there (``quiesce-host
        serve VM``), so they wait for the switches and not for the VM's own records, which
        are durable before this returns all the same (the intent before the pause, vm.json
        after it). What ``pause()`` raises (a drain that timed out) leaves nothing changed."""
        record: dict[str, Any] = {
            "description": description,
            "consistency": consistency,
            "report": report or {},
            "artifacts": artifacts or {},
        }
        with self._lock:
            self._writable()
            self._finish_pending()
            self.tree.check_new_snapshot(name, consistency)
            new = {n: d.tree.next_delta_name(d.folder) for n, d in self.disks.items()}
            for disk_name, disk in self.disks.items():
                try:
                    disk.tree.taking(name, new[disk_name], **record)
                except ChainTooDeep as err:
                    raise ChainTooDeep(
                        f"VM {self.folder}, disk {disk_name!r}: {err}", err.path
                    ) from err
            _, failed = self._on_every_disk(lambda n, d: d.flush())  # most of it before the pause
            if failed is not None:
                raise failed
            write_vm_intent(self.folder, VmCreate(name, new))
            switched: tuple[list[Disk], BaseException | None] | None = None
            try:
                with pause():
                    switched = self._switch_all(name, description, consistency, new)
            except BaseException:
                if switched is None:  # the pause failed: no disk was touched
                    clear_vm_intent(self.folder)
                    raise
            assert switched is not None
            done, failed = switched
            if failed is not None:
                if isinstance(failed, DiskError):
                    self._take_back(name, done)
                raise failed
            layers = {n: d.tree.snapshot(name)["layer"] for n, d in self.disks.items()}
            after = self.tree.taking(name, record, layers)
            after.save()
            clear_vm_intent(self.folder)
            self.tree = after
            return self.snapshot_get(name)

    def _switch_all(
        self, name: str, description: str, consistency: str, new: dict[str, str]
    ) -> tuple[list[Disk], BaseException | None]:
        """Switch every disk to its new delta at one instant: one thread per disk takes its
        disk's lock, all wait until every disk is locked (no I/O through any of them then),
        each switches (a few fsyncs of its own files: they run side by side, so a cut of 16
        disks is not 16 switches long), and none lets go before every one has switched.
        Returns when all have ended: (the disks switched, the first failure or None)."""
        locked, switched = threading.Barrier(len(self.disks)), threading.Barrier(len(self.disks))

        def switch(disk_name: str, disk: Disk) -> None:
            with disk._lock:
                locked.wait()
                try:
                    disk.switch_for_vm(name, description, consistency, new[disk_name])
                finally:
                    switched.wait()

        return self._on_every_disk(switch)

    def _on_every_disk(
        self, work: Callable[[str, Disk], object]
    ) -> tuple[list[Disk], BaseException | None]:
        """``work(name, disk)`` for every disk at once, a thread each (the first disk in
        this thread); returns when all have ended: (the disks it finished on, the first
        failure or None)."""
        items = list(self.disks.items())
        if self._pool is None or self._pool_size != len(items) - 1:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool = ThreadPoolExecutor(max(1, len(items) - 1), thread_name_prefix="vm")
            self._pool_size = len(items) - 1
        futures = {self._pool.submit(work, n, d): d for n, d in items[1:]}
        done: list[Disk] = []
        errors: list[BaseException] = []
        try:
            work(*items[0])
            done.append(items[0][1])
        except BaseException as err:  # noqa: BLE001 - handed back with the others
            errors.append(err)
        wait(futures)
        done += [d for f, d in futures.items() if f.exception() is None]
        errors += [e for e in (f.exception() for f in futures) if e is not None]
        return done, errors[0] if errors else None

    def _take_back(self, name: str, done: list[Disk]) -> None:
        """Undo a create on the disks that switched (each merges an empty delta back). If
        that fails too the intent stays, and the next operation or open finishes it."""
        try:
            for disk in done:
                disk.snapshot_delete(name)
            clear_vm_intent(self.folder)
        except DiskError:
            pass

    def snapshot_update(
        self,
        name: str,
        *,
        description: str | None = None,
        consistency: str | None = None,
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Replace fields of ``name``'s record (the VM's; the level and description go to the
        disks' own records too). Raises SnapshotNotFound, DiskError, ReadOnly."""
        fields = dict(zip(RECORD_KEYS, (description, consistency, report, artifacts), strict=True))
        with self._lock:
            self._writable()
            after = self.tree.updating(name, fields)
            after.save()
            self.tree = after
            if description is not None or consistency is not None:
                for disk_name in after.snapshot(name)["layers"]:
                    self.disks[disk_name].snapshot_update(
                        name, description=description, consistency=consistency
                    )
            return self.snapshot_get(name)

    def snapshot_list(self) -> list[dict[str, Any]]:
        """Every VM snapshot (oldest first) with parent, children, ``is_current_position``
        and the layer of each disk."""
        with self._lock:
            shape = {s["name"]: s for s in self._first_disk().snapshot_list()}
            out = []
            for snap in self.tree.snapshots:
                entry = {k: v for k, v in snap.items() if k not in ("report", "artifacts")}
                ref = shape.get(snap["name"], {})
                for key in ("parent", "children", "is_current_position"):
                    entry[key] = ref.get(key)
                out.append(entry)
            return out

    def snapshot_get(self, name: str) -> dict[str, Any]:
        with self._lock:
            snap = dict(self.tree.snapshot(name))
            first = self._first_disk()
            snap["parent"] = first.tree.named_ancestor(first.tree.snapshot(name)["layer"])
            return snap

    def _first_disk(self) -> Disk:
        """The VM's first disk: in every snapshot (disks are never removed), so its tree has
        the VM's parent links and position."""
        return self.disks[self.tree.disk_names()[0]]

    def snapshot_revert(self, name: str) -> None:
        """Discard the current state of every disk; each starts a new delta on ``name``."""
        with self._lock:
            self._writable()
            self._finish_pending()
            layers = self.tree.snapshot(name)["layers"]
            later = [n for n in self.tree.disk_names() if n not in layers]
            if later:
                raise DiskError(
                    f"{self.folder}: disk {', '.join(map(repr, later))} did not exist at "
                    f"snapshot {name!r} (added after it), so the VM cannot go back to it; "
                    "nothing was changed",
                    self.folder / later[0],
                )
            self._run(VmRevert(name, {n: d.tree.current for n, d in self.disks.items()}))

    def snapshot_delete(self, name: str, progress: Progress | None = None) -> None:
        """Drop ``name`` on every disk that has it (each merges what it no longer needs)."""
        with self._lock:
            self._writable()
            self._finish_pending()
            self.tree.snapshot(name)  # SnapshotNotFound
            try:
                self._run(VmDelete(name), progress)
            except DiskError:  # NoSpace part-way: finished later, never undone
                self.tree = self.tree.without(name)
                raise

    def snapshot_delete_all(self, progress: Progress | None = None) -> None:
        """Merge every disk's current chain into its base; drop every snapshot."""
        with self._lock:
            self._writable()
            self._finish_pending()
            try:
                self._run(VmDeleteAll(), progress)
            except DiskError:
                self.tree.snapshots = []
                raise

    def delete_cost(self, name: str) -> int:
        """Bytes that deleting ``name`` would copy, over every disk."""
        with self._lock:
            layers = self.tree.snapshot(name)["layers"]
            return sum(self.disks[n].delete_cost(name) for n in layers if n in self.disks)

    # -- whole-VM -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes over every disk."""
        return sum(d.size for d in self.disks.values())

    def export_raw(
        self,
        out: str | Path,
        snapshot: str | None = None,
        progress: Progress | None = None,
        *,
        sync: bool = True,
    ) -> None:
        """A VM is no one image: refused, naming what to export instead."""
        raise DiskError(
            f"{self.folder}: a VM has one image per disk; export a disk of it "
            f"('quiesce-host disk export {self.folder}/DISK OUT.raw --snapshot NAME', served "
            "or not)",
            self.folder,
        )

    def export_disk_raw(
        self,
        disk: str,
        out: str | Path,
        snapshot: str | None = None,
        progress: Progress | None = None,
        *,
        sync: bool = True,
    ) -> None:
        """Disk ``disk``'s image at the VM's ``snapshot`` (or now), as ``Disk.export_raw``:
        the VM is not locked meanwhile, so a server's cuts go on during the export (its
        deletes wait for it). DiskError naming the disk when the VM has no such disk or the
        disk did not exist at ``snapshot``."""
        with self._lock:
            member = self._disk_named(disk)
            if snapshot is not None and disk not in self.tree.snapshot(snapshot)["layers"]:
                raise DiskError(
                    f"{self.folder / disk}: disk {disk!r} did not exist at snapshot "
                    f"{snapshot!r} (added after it), so it has no image of it",
                    self.folder / disk,
                )
        member.export_raw(out, snapshot, progress, sync=sync)

    def disk_info(self, disk: str) -> dict[str, Any]:
        """Disk ``disk``'s ``Disk.info`` (its chain and layers), for ``disk info VM/NAME``."""
        with self._lock:
            return self._disk_named(disk).info()

    def _disk_named(self, disk: str) -> Disk:
        if disk not in self.disks:
            raise DiskError(
                f"{self.folder}: no disk named {disk!r} (the VM's disks: "
                f"{', '.join(self.tree.disk_names())})",
                self.folder,
            )
        return self.disks[disk]

    def check(self) -> list[str]:
        """Every problem of each disk, and every way the disks disagree with vm.json."""
        with self._lock:
            return examine_vm(self.folder, lambda name: self.disks[name].check())

    def info(self) -> dict[str, Any]:
        with self._lock:
            first = self._first_disk() if self.disks else None
            disks = []
            for entry in self.tree.disks:
                d = self.disks[entry["name"]]
                disks.append(
                    {
                        "name": entry["name"],
                        "added": entry.get("added"),
                        "folder": str(d.folder),
                        "size": d.size,
                        "current": str(d.current_file()),
                        "current_layer": d.tree.current,
                        "depth": d.tree.depth(),
                        "snapshots": len(d.tree.snapshots),
                    }
                )
            return {
                "folder": str(self.folder),
                "vm": self.tree.id,
                "readonly": self.readonly,
                "snapshots": len(self.tree.snapshots),
                "position": first.tree.named_ancestor(first.tree.current) if first else None,
                "depth": first.tree.depth() if first else 0,
                "max_depth": MAX_CHAIN,
                "disks": disks,
            }


def vm_snapshot_record(folder: Path, name: str) -> dict[str, Any]:
    """Snapshot ``name``'s full record from ``vm.json``, with its parent (from the first
    disk's tree), read without any lock (both files are replaced atomically)."""
    tree = VmTree.load(folder)
    snap = dict(tree.snapshot(name))
    first = Tree.load(folder / tree.disk_names()[0])
    snap["parent"] = first.named_ancestor(first.snapshot(name)["layer"])
    return snap


def open_any(folder: str | Path, readonly: bool = False) -> Disk | VM:
    """The VM in ``folder`` (it holds vm.json) or the disk. A disk of a VM is refused for
    writing on its own: a snapshot, revert or delete of one disk would leave it out of step
    with the VM's other disks. Raises what ``VM.open`` and ``Disk.open`` raise."""
    if is_vm(folder):
        return VM.open(folder, readonly)
    owner = vm_of(folder)
    if owner is not None and not readonly and is_vm(owner):
        raise DiskError(
            f"{folder}: a disk of the VM {owner}; snapshots are taken, reverted and deleted "
            f"on the VM as a whole (e.g. 'quiesce-host snapshot create {owner} NAME')",
            folder,
        )
    return Disk.open(folder, readonly)
