"""``disk check``: every file and link of a disk folder examined on its own, all problems told.

``Disk.open`` stops at the first file it cannot use, which is right for reading and writing
but wrong for a check: a sysadmin with a truncated delta and a parent another tool modified
wants to hear about both at once. So each layer is opened here by itself, read-only, and what
it refuses is a problem of that file; each layer that opens is asked for the damage that open
tolerates (``problems()``: overlapping or misaligned grains, redundant tables that differ, a
descriptor qemu would misparse); each parent link is checked where both ends opened. Every
problem names the file, what is wrong, and the part that file plays in the tree.

Raises DiskError (no such folder), DiskBusy (a server or command holds the disk): there is
nothing to check then. Everything else found is returned as a problem.
"""

from __future__ import annotations

from pathlib import Path

from host.engine.chain import Layer
from host.engine.durable import INTENT, FolderLock, read_intent
from host.engine.errors import ChainBroken, CidMismatch, DiskError
from host.engine.flat import FlatBase
from host.engine.names import BASE_NAME, inside, safe_name
from host.engine.sparse import SparseExtent
from host.engine.tree import DELTA_NAME, Tree


def check_folder(folder: str | Path) -> list[str]:
    """Every problem found in ``folder`` (empty = clean), without changing a byte."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiskError(f"{folder}: no such disk folder", folder)
    lock = FolderLock(folder, shared=True)
    try:
        return examine(folder)
    finally:
        lock.release()


def examine(folder: Path) -> list[str]:
    """The check itself; the caller holds the folder's lock (shared or its own writer lock)."""
    problems: list[str] = []
    pending = False
    try:
        intent = read_intent(folder)
        if intent is not None:
            pending = True
            problems.append(
                f"{folder / INTENT}: an interrupted {intent['op']} is pending; the "
                "next read-write open of the disk ('snapshot create', 'revert', "
                "'delete' or 'serve') finishes or undoes it first"
            )
    except DiskError as err:
        problems.append(str(err))
    try:
        tree = Tree.load(folder)
    except DiskError as err:
        return [*problems, str(err)]
    layers: dict[str, Layer] = {}
    try:
        for name in tree.layers:
            try:
                layers[name] = _open(folder, tree, name)
            except DiskError as err:
                problems.append(f"{err} ({role(tree, name)})")
        for layer in layers.values():
            problems += [f"{layer.path}: {p}" for p in layer.problems()]
        if not pending:  # a merge in progress has links half re-pointed, legitimately
            for name, parent in tree.layers.items():
                if parent is not None and name in layers and parent in layers:
                    broken = link_error(layers[name], layers[parent], parent)
                    if broken is not None:
                        problems.append(str(broken))
    finally:
        for layer in layers.values():
            layer.close()
    for p in sorted(folder.iterdir()):
        if DELTA_NAME.match(p.name) and p.name not in tree.layers:
            problems.append(f"{p}: a delta file that no snapshot or layer uses")
        elif p.name.startswith(".") and ".tmp-" in p.name:
            problems.append(f"{p}: a temporary file left by an interrupted write")
    return problems


def _open(folder: Path, tree: Tree, name: str) -> Layer:
    if name == BASE_NAME:
        return FlatBase(folder, tree.size, writable=False)
    owner = tree.path
    return SparseExtent(
        inside(folder, safe_name(folder, name, "layer", owner), owner), False, tree.size
    )


def role(tree: Tree, name: str) -> str:
    """What ``name`` is for, e.g. "this file holds snapshot 'a' and is the parent of X"."""
    parts = []
    if name == tree.current:
        parts.append("takes the writes")
    snaps = [repr(s["name"]) for s in tree.snapshots if s["layer"] == name]
    if snaps:
        parts.append(f"holds snapshot {', '.join(snaps)}")
    kids = tree.children(name)
    if kids:
        parts.append(f"is the parent of {', '.join(kids)}")
    if not parts:
        return "this file is an unnamed layer of the tree"
    return "this file " + (
        " and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else parts[0]
    )


def link_error(child: Layer, parent: Layer, parent_name: str) -> DiskError | None:
    """How ``child``'s descriptor fails to name ``parent`` as tree.json says it should, as
    the error ``Disk.open`` raises (and ``disk check`` reports); None when the link holds."""
    desc = child.read_descriptor()
    if desc.parent_hint is None:
        return ChainBroken(
            f"{child.path}: no parentFileNameHint, but tree.json says its parent is {parent_name}",
            child.path,
        )
    try:
        safe_name(child.path.parent, desc.parent_hint, "parentFileNameHint", child.path)
    except DiskError as err:
        return err
    if desc.parent_hint != parent_name:
        return ChainBroken(
            f"{child.path}: parentFileNameHint is {desc.parent_hint!r} but "
            f"tree.json says its parent is {parent_name}",
            child.path,
        )
    cid = parent.read_cid()
    if desc.parent_cid != cid:
        return CidMismatch(
            f"{child.path}: parentCID={desc.parent_cid:08x} but its parent {parent_name} has "
            f"CID={cid:08x}: the parent was modified after the child was made (written by "
            "another tool?); qemu would fail every read through it. If 'qemu-img commit' made "
            "the change, 'disk check --relink' repairs the link",
            child.path,
        )
    return None
