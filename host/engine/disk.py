"""The public face of the delta-disk engine: ``Disk``, a folder of VMware layer files.

``Disk.create(folder, size)`` makes a flat base; ``Disk.open(folder)`` locks the folder (one
writer, ``fcntl.flock`` on ``.lock``), finishes or rolls back an operation a crash
interrupted, checks every layer and its parent links, and builds the read map of the current
chain. Reads and writes are thread-safe (one internal lock), so an NBD or FUSE server can call
them from several threads; ``snapshot_create`` flushes and switches writes to a new delta
under that same lock, so concurrent writers see a clean cut.

Semantics (see DESIGN.md "The delta-disk engine" and docs/internals/disk-format.md):

- a snapshot names the layer that was writable when it was taken; that layer is read-only
  from then on and a new empty delta takes the writes;
- ``snapshot_revert`` discards the writable layer and starts a new empty one on the target;
  every other branch stays;
- ``snapshot_delete`` drops the name; a layer no snapshot names any more is merged: its one
  child delta is merged into it (the child's grains win) and takes the child's place, or it is
  removed when nothing descends from it, or it stays as an unnamed layer while two branches
  still need it;
- ``snapshot_delete_all`` writes every grain of the current chain straight into the base in
  one pass and removes every delta.

Errors: every method raises subclasses of ``DiskError`` (``host.engine.errors``), whose
messages name the file and what is wrong.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from host.engine.chain import Chain, Progress
from host.engine.check import examine, relink_layers, verify_links
from host.engine.durable import FolderLock, sweep_pending_logs, sweep_temp_files
from host.engine.errors import DiskError, ReadOnly, space_error
from host.engine.export import write_raw
from host.engine.flat import HEADER_PROBE, FlatBase, image_format, source_size
from host.engine.intents import (
    INTENT,
    CreateIntent,
    DropIntent,
    Intent,
    MergeAllIntent,
    MergeIntent,
    RevertIntent,
    clear_intent,
    new_delta,
    read_intent,
    write_intent,
)
from host.engine.layers import Layers
from host.engine.names import BASE_NAME, FLAT_NAME, new_cid
from host.engine.planning import delete_cost, tidy_step, without
from host.engine.sparse import GRAIN, MAX_CAPACITY, SparseExtent
from host.engine.tree import MAX_CHAIN, Tree

__all__ = ["Disk", "check_source", "new_disk_size"]


def check_source(folder: Path, source: Path, size: int | None) -> int:
    """The size of ``source``, a raw image (a file or a block device) to start disk
    ``folder`` of ``size`` bytes (None: the image's own size) from; DiskError naming the
    image when it cannot be read, is neither a file nor a block device, is an image of
    another format (its bytes are not the disk's), or is larger than the disk."""
    try:
        st = source.stat()
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise DiskError(
                f"{source}: neither a raw image file nor a block device; a disk starts from one",
                folder,
            )
        with open(source, "rb") as f:
            head = f.read(HEADER_PROBE)
            have = source_size(f.fileno())
    except OSError as err:
        raise DiskError(f"{source}: cannot read the source image: {err.strerror}", folder) from err
    kind = image_format(head)
    if kind is not None:
        raise DiskError(
            f"{source}: a {kind} image, not a raw one; convert it first: "
            f"qemu-img convert -O raw {source} {_raw_name(source)}",
            folder,
        )
    if size is not None and have > size:
        raise DiskError(
            f"{source}: the image is {have} bytes, larger than the disk ({size})", folder
        )
    return have


def _raw_name(image: Path) -> Path:
    """Where a converted copy of ``image`` goes: beside it, never onto it (a qcow2 named
    disk.raw would otherwise be told to convert onto itself)."""
    raw = image.with_suffix(".raw")
    return raw if raw != image else image.with_name(f"{image.stem}-converted.raw")


def new_disk_size(folder: Path, size: int | None, source: Path | None) -> int:
    """The size of new disk ``folder``: ``size``, else the size of its image ``source``;
    the image checked either way (``check_source``). DiskError when there is neither."""
    have = None if source is None else check_source(folder, source, size)
    if size is not None:
        return size
    if have is None:
        raise DiskError(
            f"{folder}: disk {folder.name!r} needs a size, or an image to take it from", folder
        )
    return have


class Disk:
    """A disk folder: a flat base, sparse deltas, ``tree.json``. Use ``create``/``open``."""

    def __init__(self, folder: Path, readonly: bool, lock: FolderLock, verify: bool = True) -> None:
        self.folder = folder
        self.readonly = readonly
        self._flock: FolderLock | None = lock
        self._lock = threading.RLock()
        self._layers = Layers(folder, not readonly, lambda: self.tree)
        self._load(verify=verify)
        self.size: int = self.tree.size

    # -- life-cycle -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        folder: str | Path,
        size: int | None,
        *,
        preallocate: bool = True,
        source: str | Path | None = None,
        progress: Progress | None = None,
    ) -> Disk:
        """Make a new disk of ``size`` bytes, rounded up to a whole 64 KiB grain.

        ``folder`` is created if needed and must be empty. The flat base is preallocated
        (``posix_fallocate``) unless ``preallocate`` is False; a preallocated base is what
        lets ``snapshot_delete_all`` never run out of space. With ``source`` (a raw image,
        at most ``size`` bytes) the base starts as a copy of it: the flat extent is raw, so
        the image's bytes are the disk's (cloned where the filesystem can, else copied
        sparsely; ``progress(done, total)`` follows the copy); ``source`` itself is never
        written, and ``size`` None takes the image's size.
        """
        folder = Path(folder)
        source = None if source is None else Path(source)
        size = new_disk_size(folder, size, source)
        if size <= 0:
            raise DiskError(f"{folder}: size must be positive (got {size})", folder)
        size = -(-size // GRAIN) * GRAIN
        if size > MAX_CAPACITY:
            raise DiskError(
                f"{folder}: {size} bytes is larger than the sparse format's "
                f"limit of {MAX_CAPACITY} bytes (2 TiB)",
                folder,
            )
        folder.mkdir(parents=True, exist_ok=True)
        if any(not p.name.startswith(".") for p in folder.iterdir()):
            raise DiskError(f"{folder}: not empty; a new disk needs an empty folder", folder)
        lock = FolderLock(folder, shared=False)
        try:
            FlatBase.create(folder, size, preallocate, source, progress)
            Tree.new(folder, size).save()
        except DiskError:
            for name in (BASE_NAME, FLAT_NAME):
                (folder / name).unlink(missing_ok=True)
            raise
        finally:
            lock.release()
        return cls.open(folder)

    @classmethod
    def open(cls, folder: str | Path, readonly: bool = False) -> Disk:
        """Lock and open a disk; finish or roll back an interrupted operation first.

        Raises DiskBusy, CorruptFile, ForeignFile, ChainBroken, CidMismatch.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise DiskError(f"{folder}: no such disk folder", folder)
        return cls._locked(folder, readonly)

    @classmethod
    def _locked(cls, folder: Path, readonly: bool, verify: bool = True) -> Disk:
        lock = FolderLock(folder, shared=readonly)
        try:
            return cls(folder, readonly, lock, verify)
        except BaseException:
            lock.release()
            raise

    def __enter__(self) -> Disk:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._flock is None:
                return
            try:
                if not self.readonly:
                    self.flush()
            finally:
                try:
                    self._close_layers()
                finally:  # a close that fails still lets go of the disk
                    self._flock.release()
                    self._flock = None

    def _close_layers(self) -> None:
        self._layers.close_all()

    def _load(self, recover: bool = True, verify: bool = True) -> None:
        """Recover a pending intent, read the tree, open and verify every layer."""
        if not self.readonly:
            sweep_temp_files(self.folder)
        intent = read_intent(self.folder) if recover else None
        if intent is not None:
            if self.readonly:
                raise DiskError(
                    f"{self.folder}: an interrupted {intent.op} is pending; "
                    "open the disk read-write once to finish it",
                    self.folder,
                )
            self._recover(intent)
        self.tree = Tree.load(self.folder)
        if not self.readonly:
            sweep_pending_logs(self.folder, self.tree.layers)
        try:
            for name in self.tree.layers:
                self._layers[name]  # opened here: a bad file fails the open
            if recover and verify:  # links are mid-repair while a failed merge waits
                verify_links(self.tree, self._layers)
        except BaseException:
            self._close_layers()
            raise
        self._chain = self._build_chain(self.tree.current)

    def _build_chain(self, top: str) -> Chain:
        return Chain([self._layers[n] for n in self.tree.chain(top)])

    def _adopt(self, tree: Tree) -> None:
        """An operation is done: ``tree`` is the saved one, and its current chain is read."""
        self.tree = tree
        self._chain = self._build_chain(tree.current)

    def _writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise ReadOnly(f"{self.folder}: opened read-only", self.folder)

    def _finish_pending(self) -> None:
        """After a failed merge (NoSpace), try again before the next tree change."""
        if (self.folder / INTENT).exists():
            self._close_layers()
            try:
                self._load()
            except DiskError:
                self._close_layers()
                self._load(recover=False)  # merges keep the view: reads stay right
                self._hide_doomed(read_intent(self.folder))
                raise

    # -- recovery: each step below can be repeated after a crash ----------------------------

    def _recover(self, intent: Intent) -> None:
        """Roll an interrupted operation forward (merges) or back (create/revert)."""
        self.tree = Tree.load(self.folder)
        try:
            intent.roll_forward(self._layers, self.tree)
        finally:
            self._close_layers()
        clear_intent(self.folder)

    def _hide_doomed(self, intent: Intent | None) -> None:
        """A merge that failed (NoSpace) stays pending and is finished later, never undone:
        the snapshots it deletes are gone now (their layers are already being overwritten),
        so drop them from the in-memory tree too."""
        if intent is not None:
            self.tree.snapshots = intent.snapshots_after(self.tree.snapshots)

    def _merge(self, intent: MergeIntent | MergeAllIntent, progress: Progress | None) -> None:
        """Write the intent and merge; a merge that fails keeps its intent (see above)."""
        write_intent(self.folder, intent)
        try:
            self._adopt(intent.run(self._layers, progress))
        except DiskError:
            self._hide_doomed(intent)
            raise

    # -- data -----------------------------------------------------------------------------

    def _bounds(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DiskError(
                f"{self.folder}: range {offset}+{length} is outside the disk ({self.size} bytes)",
                self.folder,
            )

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; zeros where nothing was ever written."""
        with self._lock:
            self._bounds(offset, length)
            self._check_open()
            return self._chain.read(offset, length)

    def _before_write(self) -> None:
        top = self._chain.top
        if not top.cid_bumped:  # VMware and qemu: a new CID at the first change after open
            top.set_cid(new_cid())
            top.cid_bumped = True

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write at any offset and length; copy-on-write per grain into the current layer."""
        n = len(data)
        with self._lock:
            chain = self._chain
            if chain.top.cid_bumped and self._flock and 0 <= offset and offset + n <= self.size:
                if not chain.overwrite(offset, data):  # the common case: done at once
                    chain.write(offset, data)
                return
            self._writable()
            self._bounds(offset, n)
            if n:
                self._before_write()
                self._chain.write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Zero a range: holes punched in the base, grains skipped in a delta when already 0."""
        with self._lock:
            self._writable()
            self._bounds(offset, length)
            if length:
                self._before_write()
                self._chain.write_zeroes(offset, length)

    def flush(self) -> None:
        """fsync everything written to the current layer."""
        with self._lock:
            if self._flock is None or self.readonly:
                return
            try:
                self._chain.top.sync()
            except OSError as err:
                raise space_error(err, self._chain.top.path, "flushing") from err

    def current_file(self) -> Path:
        """The file that takes the writes (``disk-flat.vmdk``'s descriptor for the base)."""
        return self.folder / self.tree.current

    # -- snapshots ------------------------------------------------------------------------

    def snapshot_create(
        self,
        name: str,
        description: str = "",
        consistency: str = "crash",
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Flush, freeze the current layer under ``name``, switch writes to a new delta.

        Raises SnapshotExists, ChainTooDeep, NoSpace (nothing changed), DiskError.
        """
        with self._lock:
            self._writable()
            self._finish_pending()
            tree = self.tree.taking(
                name,
                self.tree.next_delta_name(self.folder),
                description=description,
                consistency=consistency,
                report=report or {},
                artifacts=artifacts or {},
            )
            self.flush()
            intent = CreateIntent(tree.current)
            write_intent(self.folder, intent)
            self.tree = intent.run(self._layers, tree)
            layer = self._layers[tree.current]
            assert isinstance(layer, SparseExtent)
            self._chain.push(layer)
            return dict(tree.snapshot(name))

    def switch_for_vm(self, name: str, description: str, consistency: str, new: str) -> None:
        """``snapshot_create`` for a VM's cut, without the disk's own intent: the VM's intent
        names ``new`` (``next_delta_name``, asked before) and removes it after a crash that
        came before this disk's tree was saved. Flush, make ``new``, save the tree, switch.
        Raises what ``snapshot_create`` raises; on failure nothing of it is left."""
        with self._lock:
            self._writable()
            self._finish_pending()
            tree = self.tree.taking(
                name,
                new,
                description=description,
                consistency=consistency,
                report={},
                artifacts={},
            )
            self.flush()
            new_delta(self._layers, new, tree)
            self.tree = tree
            layer = self._layers[new]
            assert isinstance(layer, SparseExtent)
            self._chain.push(layer)

    def snapshot_update(
        self,
        name: str,
        *,
        description: str | None = None,
        consistency: str | None = None,
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Replace fields of ``name``'s record (the fields given; the data is untouched).

        A quiesced snapshot is created inside the frozen window as ``crash`` and gets its
        final level, report and artifacts here, after the thaw. Atomic (``tree.json`` is
        replaced). Raises SnapshotNotFound, DiskError (a bad consistency), ReadOnly.
        """
        with self._lock:
            self._writable()
            fields = {
                "description": description,
                "consistency": consistency,
                "report": report,
                "artifacts": artifacts,
            }
            tree = self.tree.updating(name, fields)
            tree.save()
            self.tree = tree
            return dict(tree.snapshot(name))

    def delete_cost(self, name: str) -> int:
        """Bytes that deleting ``name`` would copy, over every merge the delete sets off (a
        layer no snapshot names any more takes in its one child delta). For the snapshot just
        taken that is only what was written since: that is how a quiesce that failed after
        the switch takes it back, even while the disk is served. 0 when no data moves."""
        with self._lock:
            return delete_cost(self.tree, name, self._layers.grains)

    def snapshot_list(self) -> list[dict[str, Any]]:
        """Every snapshot (oldest first) with parent, children and ``is_current_position``."""
        with self._lock:
            return self.tree.listing()

    def snapshot_get(self, name: str) -> dict[str, Any]:
        with self._lock:
            snap = dict(self.tree.snapshot(name))
            snap["parent"] = self.tree.named_ancestor(snap["layer"])
            return snap

    def snapshot_revert(self, name: str) -> None:
        """Discard the current state; a new empty delta on ``name``'s state takes writes."""
        with self._lock:
            self._writable()
            self._finish_pending()
            tree = self.tree.reverting(name, self.tree.next_delta_name(self.folder))
            intent = RevertIntent(tree.current, self.tree.current)
            write_intent(self.folder, intent)
            self._adopt(intent.run(self._layers, tree))
            self._normalize(self.tree.copy(), None)

    def snapshot_delete(self, name: str, progress: Progress | None = None) -> None:
        """Drop ``name`` and merge what no snapshot needs any more (see the module doc)."""
        with self._lock:
            self._writable()
            self._finish_pending()
            tree = without(self.tree, name)  # SnapshotNotFound
            self.flush()  # pending grain entries into the tables before any merge
            self._normalize(tree, progress)

    def snapshot_delete_all(self, progress: Progress | None = None) -> None:
        """Merge the current chain straight into the base in one pass; drop every delta."""
        with self._lock:
            self._writable()
            self._finish_pending()
            self.flush()
            chain = self.tree.chain(self.tree.current)
            others = [n for n in self.tree.layers if n not in chain]
            self._merge(MergeAllIntent(tuple(chain), tuple(others)), progress)

    def _normalize(self, tree: Tree, progress: Progress | None) -> None:
        """Merge or remove unnamed layers until every read-only layer is needed."""
        while (step := tidy_step(tree)) is not None:
            if step.child is None:
                drop = DropIntent((step.layer,), step.after)
                write_intent(self.folder, drop)
                self._adopt(drop.run(self._layers))
            else:
                self._merge(MergeIntent(step.child, step.layer, step.after), progress)
            tree = self.tree.copy()
        if tree.to_json() != self.tree.to_json():
            tree.save()
            self.tree = tree

    # -- whole-disk operations ------------------------------------------------------------

    def export_raw(
        self,
        out: str | Path,
        snapshot: str | None = None,
        progress: Progress | None = None,
        *,
        sync: bool = True,
    ) -> None:
        """Flatten the current state (or ``snapshot``'s) into a raw image file ``out``.

        Written to ``out.part``, fsync-ed (unless ``sync`` is False) and renamed; zero runs
        are left as holes. The lock is taken per chunk, so a server's clients go on writing
        during the export of a snapshot (its layers are read-only; the server keeps deletes
        out meanwhile). The current state is a point in time only when nothing writes.
        """
        with self._lock:
            self._check_open()
            top = self.tree.current if snapshot is None else self.tree.snapshot(snapshot)["layer"]
            chain = self._chain if top == self.tree.current else self._build_chain(top)

        def read(offset: int, length: int) -> bytes:
            with self._lock:
                self._check_open()
                return chain.read(offset, length)

        write_raw(Path(out), self.size, read, progress, sync)

    def _check_open(self) -> None:
        if self._flock is None:
            raise DiskError(f"{self.folder}: the disk is closed", self.folder)

    @classmethod
    def relink(cls, folder: str | Path) -> list[str]:
        """Repair the parent links of every delta from ``tree.json``: hint and ``parentCID``.

        For a chain another tool changed (``qemu-img commit`` gives the base a new CID and
        leaves the child's ``parentCID`` stale). Only use it when the parent's change kept
        the child's view (as a commit does): the engine cannot tell. Returns what it fixed.
        """
        with cls._locked(Path(folder), False, verify=False) as disk:
            return relink_layers(disk.tree, disk._layers)

    def check(self) -> list[str]:
        """Problems found in the files and links (empty = clean).

        Beyond what ``open`` refuses outright: what qemu-img check misses (grains shared or
        misaligned, a redundant table that differs from the primary, descriptor text qemu
        would misparse), stray files, a pending intent.
        """
        with self._lock:
            self.flush()  # the tables on disk are what is examined
            return examine(self.folder)

    def info(self) -> dict[str, Any]:
        with self._lock:
            tree = self.tree
            return {
                "folder": str(self.folder),
                "size": self.size,
                "current": str(self.current_file()),
                "current_layer": tree.current,
                "chain": tree.chain(tree.current),
                "depth": tree.depth(),
                "max_depth": MAX_CHAIN,
                "snapshots": len(tree.snapshots),
                "position": tree.named_ancestor(tree.current),
                "readonly": self.readonly,
                "layers": self._layers.describe(tree),
                "orphans": tree.stray_deltas(),
            }
