"""The intent record, ``DISK/intent.json``: what a multi-step operation is about to do, and
how to finish it after a crash.

An operation writes its intent (atomically) before its first step and removes it after its
last; ``run`` is the steps in between (a create or revert whose step fails undoes itself at
once). ``Disk.open`` reads a record a crash left behind and calls its ``roll_forward``
(``docs/internals/disk-format.md`` lists the steps of each and what a crash leaves)::

    CreateIntent    create     new                 the tree does not name new: remove it
    RevertIntent    revert     new discard         remove whichever the tree no longer has
    DropIntent      drop       files tree          save the tree, remove the files
    MergeIntent     merge      src dst tree        redo the merge while src is still there
    MergeAllIntent  merge_all  chain discard       redo the flatten unless the tree is final

A merge is only ever rolled forward: the snapshots it deletes are gone from the moment the
intent exists (their layers are being overwritten), so ``snapshots_after`` hides them while
a merge that ran out of space waits; its roll-forward is the same ``run`` as the live
operation's.

Each record is checked when it is read: a damaged or malformed one is a CorruptFile naming
intent.json, a layer name that leads out of the folder a ForeignFile. The steps raise what
the layers raise (DiskError, NoSpace).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from host.engine.chain import Chain, Progress, flatten, merge_up
from host.engine.durable import read_json, unlink_durably, write_json
from host.engine.errors import CorruptFile, DiskError
from host.engine.layers import Layers
from host.engine.names import BASE_NAME, new_cid, safe_name
from host.engine.sparse import SparseExtent
from host.engine.tree import TREE, Tree

INTENT = "intent.json"
Record = dict[str, Any]
Snapshots = list[dict[str, Any]]


@dataclass(frozen=True)
class CreateIntent:
    """snapshot create: a new empty delta ``new`` is made, then the tree names it."""

    op: ClassVar[str] = "create"
    new: str

    @classmethod
    def parse(cls, record: Record, path: Path) -> CreateIntent:
        return cls(_name(record, "new", path))

    def record(self) -> Record:
        return {"op": self.op, "new": self.new}

    def run(self, layers: Layers, after: Tree) -> Tree:
        """Make the new delta on its parent and save ``after``; on failure neither is left."""
        new_delta(layers, self.new, after)
        clear_intent(layers.folder)
        return after

    def roll_forward(self, layers: Layers, tree: Tree) -> None:
        """Rolled back: a new delta the saved tree does not name is removed."""
        if self.new not in tree.layers:
            layers.remove(self.new)

    def snapshots_after(self, snapshots: Snapshots) -> Snapshots:
        return snapshots


@dataclass(frozen=True)
class RevertIntent:
    """snapshot revert: a new delta ``new`` on the target, the tree, ``discard`` removed."""

    op: ClassVar[str] = "revert"
    new: str
    discard: str

    @classmethod
    def parse(cls, record: Record, path: Path) -> RevertIntent:
        return cls(_name(record, "new", path), _name(record, "discard", path))

    def record(self) -> Record:
        return {"op": self.op, "new": self.new, "discard": self.discard}

    def run(self, layers: Layers, after: Tree) -> Tree:
        """Make the new delta on the target, save ``after``, then remove the discarded layer
        (not the base); on failure before the tree is saved, nothing changed."""
        new_delta(layers, self.new, after)
        layers.close(self.discard)
        layers.remove(self.discard)
        clear_intent(layers.folder)
        return after

    def roll_forward(self, layers: Layers, tree: Tree) -> None:
        """Forward if the saved tree has the new delta (discard it), else back (remove new)."""
        layers.remove(self.discard if tree.current == self.new else self.new)

    def snapshots_after(self, snapshots: Snapshots) -> Snapshots:
        return snapshots


@dataclass(frozen=True)
class DropIntent:
    """A delete that leaves layers ``files`` with nothing above them: ``after``, then go."""

    op: ClassVar[str] = "drop"
    files: tuple[str, ...]
    after: Tree

    @classmethod
    def parse(cls, record: Record, path: Path) -> DropIntent:
        return cls(_names(record, "files", path), _tree(record, path))

    def record(self) -> Record:
        return {"op": self.op, "files": list(self.files), "tree": self.after.to_json()}

    def run(self, layers: Layers) -> Tree:
        """Save ``after``, close and remove the files; the tree the disk has now."""
        self.after.save()
        layers.close(*self.files)
        layers.remove(*self.files)
        clear_intent(layers.folder)
        return self.after

    def roll_forward(self, layers: Layers, tree: Tree) -> None:
        self.run(layers)

    def snapshots_after(self, snapshots: Snapshots) -> Snapshots:
        return _kept(snapshots, self.after)


@dataclass(frozen=True)
class MergeIntent:
    """A delete that leaves layer ``dst`` one child ``src``: src is merged into dst."""

    op: ClassVar[str] = "merge"
    src: str
    dst: str
    after: Tree

    @classmethod
    def parse(cls, record: Record, path: Path) -> MergeIntent:
        return cls(_name(record, "src", path), _name(record, "dst", path), _tree(record, path))

    def record(self) -> Record:
        tree = self.after.to_json()
        return {"op": self.op, "src": self.src, "dst": self.dst, "tree": tree}

    def run(self, layers: Layers, progress: Progress | None = None) -> Tree:
        """Copy src's grains into dst, give dst a new CID, re-point src's children to dst,
        save ``after``, remove src; the tree the disk has now."""
        source, target = layers[self.src], layers[self.dst]
        assert isinstance(source, SparseExtent)
        merge_up(source, target, progress)
        cid = new_cid()
        target.set_cid(cid)
        target.cid_bumped = True
        for child in self.after.children(self.dst):
            layers[child].set_parent(cid, self.dst)  # type: ignore[union-attr]
        self.after.save()
        layers.close(self.src)
        layers.remove(self.src)
        clear_intent(layers.folder)
        return self.after

    def roll_forward(self, layers: Layers, tree: Tree) -> None:
        """Redo the merge from the copy while src exists (copying again gives the same)."""
        if (layers.folder / self.src).exists():
            self.run(layers)
        else:
            self.after.save()

    def snapshots_after(self, snapshots: Snapshots) -> Snapshots:
        return _kept(snapshots, self.after)


@dataclass(frozen=True)
class MergeAllIntent:
    """delete --all: every grain of ``chain``'s deltas into the base; every delta goes."""

    op: ClassVar[str] = "merge_all"
    chain: tuple[str, ...]
    discard: tuple[str, ...]

    @classmethod
    def parse(cls, record: Record, path: Path) -> MergeAllIntent:
        return cls(_names(record, "chain", path), _names(record, "discard", path))

    def record(self) -> Record:
        return {"op": self.op, "chain": list(self.chain), "discard": list(self.discard)}

    def run(self, layers: Layers, progress: Progress | None = None) -> Tree:
        """Flatten the chain into the base, give it a new CID, save the tree of a base alone,
        remove every delta; that tree."""
        if len(self.chain) > 1:
            flatten(Chain([layers[n] for n in self.chain]), progress)
        base = layers[BASE_NAME]
        base.set_cid(new_cid())
        base.cid_bumped = True
        after = Tree.new(layers.folder, layers.size)
        after.save()
        layers.close(*(n for n in layers.names() if n != BASE_NAME))
        layers.remove(*self.chain[1:], *self.discard)
        clear_intent(layers.folder)
        return after

    def roll_forward(self, layers: Layers, tree: Tree) -> None:
        """Redo the flatten, unless the saved tree is already the final one."""
        if tree.current == BASE_NAME and len(tree.layers) == 1:
            layers.remove(*self.chain[1:], *self.discard)
        else:
            self.run(layers)

    def snapshots_after(self, snapshots: Snapshots) -> Snapshots:
        return []


Intent = CreateIntent | RevertIntent | DropIntent | MergeIntent | MergeAllIntent
PARSERS: dict[str, Callable[[Record, Path], Intent]] = {
    kind.op: kind.parse
    for kind in (CreateIntent, RevertIntent, DropIntent, MergeIntent, MergeAllIntent)
}


def parse_intent(record: object, path: Path) -> Intent:
    """The intent a JSON record read from ``path`` (``DISK/intent.json``) describes."""
    if not isinstance(record, dict) or not isinstance(record.get("op"), str):
        raise CorruptFile(f"{path}: the intent record has no 'op'", path)
    parse = PARSERS.get(record["op"])
    if parse is None:
        raise CorruptFile(f"{path}: unknown operation {record['op']!r}", path)
    return parse(record, path)


def read_intent(folder: Path) -> Intent | None:
    """The pending intent, or None. A damaged record is a CorruptFile."""
    path = folder / INTENT
    try:
        obj = read_json(path, "the intent record")
    except FileNotFoundError:
        return None
    return parse_intent(obj, path)


def write_intent(folder: Path, intent: Intent) -> None:
    write_json(folder / INTENT, intent.record())


def clear_intent(folder: Path) -> None:
    unlink_durably(folder / INTENT)


def _malformed(record: Record, path: Path, what: str) -> CorruptFile:
    return CorruptFile(f"{path}: malformed {record['op']} record ({what})", path)


def _name(record: Record, key: str, path: Path) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise _malformed(record, path, f"{key!r} is missing or not a file name")
    return safe_name(path.parent, value, "layer", path)


def _names(record: Record, key: str, path: Path) -> tuple[str, ...]:
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _malformed(record, path, f"{key!r} is missing or not a list of file names")
    return tuple(safe_name(path.parent, v, "layer", path) for v in value)


def _tree(record: Record, path: Path) -> Tree:
    """The tree the operation ends with (validated as ``tree.json``, where it is saved)."""
    value = record.get("tree")
    if not isinstance(value, dict):
        raise _malformed(record, path, "'tree' is missing or not an object")
    try:
        return Tree(value, path.parent / TREE)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        what = f"{type(err).__name__} {err}"
        raise _malformed(record, path, f"'tree' is not a whole tree: {what}") from err


def new_delta(layers: Layers, name: str, after: Tree) -> None:
    """An empty delta ``name`` on its parent in ``after``, then ``after`` saved; if either
    fails the delta and the intent (if any: a VM's cut writes none) are removed again (the
    operation did not happen)."""
    parent = after.layers[name]
    assert parent is not None
    try:
        cid = layers[parent].read_cid()
        SparseExtent.create(layers.folder / name, layers.size, cid, parent)
        after.save()
    except DiskError:
        unlink_durably(layers.folder / name)
        clear_intent(layers.folder)
        raise


def _kept(snapshots: Snapshots, after: Tree) -> Snapshots:
    names = {s["name"] for s in after.snapshots}
    return [s for s in snapshots if s["name"] in names]
