"""``disk check``: every file and link of a disk folder examined on its own, all problems told.

``Disk.open`` stops at the first file it cannot use, which is right for reading and writing
but wrong for a check: a sysadmin with a truncated delta and a parent another tool modified
wants to hear about both at once. So each layer is opened here by itself, read-only, and what
it refuses is a problem of that file; each layer that opens is examined here for the damage
that open tolerates (``layer_problems``: overlapping or misaligned grains, redundant tables
that differ, a descriptor qemu would misparse); each parent link is checked where both ends
opened. Every problem names the file, what is wrong, and the part that file plays in the tree.

``relink_layers`` is the one repair (``disk check --relink``): every delta's parent link set
from the tree, for a chain another tool changed the way ``qemu-img commit`` does.

Raises DiskError (no such folder), DiskBusy (a server or command holds the disk): there is
nothing to check then. Everything else found is returned as a problem.
"""

from __future__ import annotations

import os
from pathlib import Path

from host.engine.chain import Layer
from host.engine.durable import FolderLock
from host.engine.errors import ChainBroken, CidMismatch, DiskError
from host.engine.flat import MAX_DESCRIPTOR_FILE, FlatBase
from host.engine.intents import INTENT, read_intent
from host.engine.layers import Layers, open_layer
from host.engine.names import safe_name
from host.engine.sparse import (
    EOL_BYTES,
    FLAG_NEWLINE,
    GRAIN,
    GRAIN_SECTORS,
    GTES,
    SECTOR,
    SparseExtent,
)
from host.engine.tree import Tree


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
                f"{folder / INTENT}: an interrupted {intent.op} is pending; the "
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
                layers[name] = open_layer(folder, tree, name, writable=False)
            except DiskError as err:
                problems.append(f"{err} ({tree.role(name)})")
        for layer in layers.values():
            problems += [f"{layer.path}: {p}" for p in layer_problems(layer)]
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
        if p.name.startswith(".") and ".tmp-" in p.name:
            problems.append(f"{p}: a temporary file left by an interrupted write")
    for name in tree.stray_deltas():
        problems.append(f"{folder / name}: a delta file that no snapshot or layer uses")
    return problems


def verify_links(tree: Tree, layers: Layers) -> None:
    """Raise the first parent link of ``tree`` that the layer files break (``Disk.open``)."""
    for name, parent in tree.layers.items():
        if parent is not None:
            err = link_error(layers[name], layers[parent], parent)
            if err is not None:
                raise err


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


def layer_problems(layer: Layer) -> list[str]:
    """What is wrong with a layer file that open tolerated."""
    return flat_problems(layer) if isinstance(layer, FlatBase) else sparse_problems(layer)


def flat_problems(base: FlatBase) -> list[str]:
    """What is wrong with the base that open tolerated."""
    with open(base.path, "rb") as f:
        return descriptor_problems(f.read(MAX_DESCRIPTOR_FILE))


def sparse_problems(extent: SparseExtent) -> list[str]:
    """Damage qemu-img check does not see: shared, misaligned or out-of-place grains,
    redundant tables that differ from the primary, descriptor text qemu would misparse."""
    out = descriptor_problems(extent.read_descriptor_bytes())
    raw = os.pread(extent.fd, SECTOR, 0)
    if extent.flags & FLAG_NEWLINE and raw[73:77] != EOL_BYTES:
        out.append("the newline-detection bytes are damaged (file mangled as text?)")
    if extent.read_descriptor().create_type != "monolithicSparse":
        out.append("createType is not monolithicSparse")
    if extent.pending:
        out.append(
            f"{len(extent.pending)} grains written before a crash are not in the "
            "grain tables yet (a read-write open commits them)"
        )
    busy = {g // GTES for g in extent.pending}
    for t, sector in enumerate(extent.gde):
        disk = extent.read_table(sector)[: len(extent.gt[t * GTES : (t + 1) * GTES])]
        if t not in busy and disk != extent.gt[t * GTES : (t + 1) * GTES]:
            out.append(f"grain table {t} on disk differs from the one in memory")
        if extent.rgde and extent.read_table(extent.rgde[t]) != extent.read_table(sector):
            out.append(
                f"redundant grain table {t} differs from the primary (damaged, "
                "or a crash cut a table update short)"
            )
    if extent.rgde and extent.rgde == extent.gde:
        out.append("the redundant grain directory is the primary one")
    used = sorted((s, g) for g, s in enumerate(extent.gt) if s > 1)
    misaligned = [(s, g) for s, g in used if s % GRAIN_SECTORS]
    if misaligned:
        s, g = misaligned[0]
        out.append(
            f"grain {g} (disk offset {g * GRAIN}) points to sector {s}, not a "
            f"multiple of {GRAIN_SECTORS}: not grain-aligned" + _more(len(misaligned))
        )
    shared = [(a, b) for a, b in zip(used, used[1:], strict=False) if a[0] + GRAIN_SECTORS > b[0]]
    if shared:
        (sa, ga), (sb, gb) = shared[0]
        out.append(
            f"grains {ga} and {gb} (disk offsets {ga * GRAIN} and {gb * GRAIN}) "
            f"overlap in the file (sectors {sa} and {sb}): writing one changes "
            "the other" + _more(len(shared))
        )
    if 1 in extent.gt and not extent.zeroed:
        out.append(
            "a grain table entry is 1 but the file has no zeroed-grain flag "
            "(qemu reads the descriptor as data)"
        )
    return out


def descriptor_problems(text: bytes) -> list[str]:
    """What qemu's strstr-based parser would get wrong in this descriptor."""
    s = text.split(b"\0", 1)[0].decode("utf-8", "replace")
    problems = []
    first = s.find("CID")
    if first < 0 or not s[first:].startswith("CID=") or (first and s[first - 1] != "\n"):
        problems.append("the first 'CID' in the descriptor is not the CID= line")
    lines = s.splitlines()
    idx = [i for i, ln in enumerate(lines) if ln.startswith("CID=")]
    if idx and (idx[0] + 1 >= len(lines) or not lines[idx[0] + 1].startswith("parentCID=")):
        problems.append("parentCID= is not on the line right after CID=")
    return problems


def _more(count: int) -> str:
    return f" ({count - 1} more like it)" if count > 1 else ""


def relink_layers(tree: Tree, layers: Layers) -> list[str]:
    """Set every delta's parent hint and ``parentCID`` to what ``tree`` and the parent's CID
    say (``disk check --relink``); what was fixed, one line per delta."""
    fixed = []
    for name, parent in tree.layers.items():
        if parent is None:
            continue
        child = layers[name]
        desc, cid = child.read_descriptor(), layers[parent].read_cid()
        if desc.parent_cid != cid or desc.parent_hint != parent:
            child.set_parent(cid, parent)  # type: ignore[union-attr]
            fixed.append(
                f"{child.path}: parent set to {parent} "
                f"(parentCID {desc.parent_cid:08x} -> {cid:08x})"
            )
    return fixed
