"""Whether a VM's disk folders agree with its tree (``vm.json``), for ``VM.open`` and ``vm check``.

``VM.open`` raises the first disagreement (after finishing an interrupted VM operation, which
legitimately leaves the disks half way); ``vm check`` (``check_vm_folder``) reports all of
them, and every problem ``disk check`` finds in each disk, without changing a byte. Each
problem names the disk, the file, and what to do:

- ``membership``: the folder of a disk the tree lists is missing, holds no disk, or holds a
  disk of another VM (its ``vm-disk.json`` names another VM or another name);
- ``disagreements``: a snapshot the tree names that a disk does not have, or under another
  layer; a disk snapshot the VM does not have; a disk whose snapshots descend from one
  another differently than the VM's, or whose current position is elsewhere (the disk has
  another history: a folder restored from a backup, copied from another VM).

Raises DiskError (no such folder), DiskBusy (held by a writer) in ``check_vm_folder``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from host.engine.check import check_folder
from host.engine.durable import FolderLock
from host.engine.errors import DiskError, ForeignFile, VmMismatch
from host.engine.tree import TREE, Tree
from host.engine.vmtree import MEMBER, VM_TREE, VmTree, is_vm, read_member, vm_of


def membership(tree: VmTree, name: str) -> DiskError | None:
    """Why ``VM/name`` cannot be the VM's disk ``name``, or None."""
    folder = tree.folder / name
    if not (folder / TREE).is_file():
        what = "is missing" if not folder.exists() else "holds no disk (no tree.json)"
        return VmMismatch(
            f"{folder}: the folder of disk {name!r} {what}, but {tree.path} lists it; "
            "restore the folder (nothing was changed)",
            folder,
        )
    member = read_member(folder)
    if member is None:
        return ForeignFile(
            f"{folder / MEMBER}: missing: {folder} is a disk, but not one made for this VM "
            "(a standalone disk copied in?); put the VM's own disk back (nothing was changed)",
            folder / MEMBER,
        )
    if member["vm"] != tree.id or member["name"] != name:
        return ForeignFile(
            f"{folder / MEMBER}: this is disk {member['name']!r} of VM {member['vm']}, not disk "
            f"{name!r} of this VM ({tree.id}, {tree.path}): a disk of another VM; put this "
            "VM's own disk back (nothing was changed)",
            folder / MEMBER,
        )
    return None


def disagreements(tree: VmTree, disks: dict[str, Tree]) -> list[VmMismatch]:
    """Every way the disks' trees disagree with the VM's tree (empty: they agree)."""
    out: list[VmMismatch] = []
    for snap in tree.snapshots:
        for disk, layer in snap["layers"].items():
            dtree = disks.get(disk)
            if dtree is None:
                continue
            path = dtree.path
            have = dtree.by_layer(layer)
            if not any(s["name"] == snap["name"] for s in dtree.snapshots):
                out.append(
                    _mismatch(
                        path,
                        f"{tree.path} says snapshot {snap['name']!r} is "
                        f"layer {layer} of disk {disk!r}, but the disk has no such "
                        "snapshot: it has another history",
                    )
                )
            elif layer not in dtree.layers:
                out.append(
                    _mismatch(
                        path,
                        f"{tree.path} names layer {layer} of disk {disk!r} "
                        f"for snapshot {snap['name']!r}, a layer the disk does "
                        "not have",
                    )
                )
            elif have is None or have["name"] != snap["name"]:
                real = dtree.snapshot(snap["name"])["layer"]
                out.append(
                    _mismatch(
                        path,
                        f"{tree.path} names layer {layer} of disk {disk!r} "
                        f"for snapshot {snap['name']!r}, but the disk keeps that "
                        f"snapshot in {real}",
                    )
                )
    for disk, dtree in disks.items():
        for s in dtree.snapshots:
            if not tree.has(s["name"]) or disk not in tree.snapshot(s["name"])["layers"]:
                out.append(
                    _mismatch(
                        dtree.path,
                        f"disk {disk!r} has snapshot {s['name']!r}, "
                        f"which {tree.path} does not list for it: the disk has "
                        "another history",
                    )
                )
    if not out:
        out += _shape(tree, disks)
    return out


def _shape(tree: VmTree, disks: dict[str, Tree]) -> list[VmMismatch]:
    """Snapshots that descend from one another, and the position, as on the first disk."""
    names = tree.disk_names()
    if not names or names[0] not in disks:
        return []
    ref = disks[names[0]]
    parent = {s["name"]: ref.named_ancestor(s["layer"]) for s in ref.snapshots}

    def nearest(name: str | None, disk: str) -> str | None:
        while name is not None and disk not in tree.snapshot(name)["layers"]:
            name = parent.get(name)
        return name

    out = []
    position = ref.named_ancestor(ref.current)
    for disk, dtree in disks.items():
        for s in dtree.snapshots:
            want, got = nearest(parent.get(s["name"]), disk), dtree.named_ancestor(s["layer"])
            if want != got:
                out.append(
                    _mismatch(
                        dtree.path,
                        f"snapshot {s['name']!r} of disk {disk!r} "
                        f"descends from {got!r}, but from {want!r} on the VM "
                        f"({tree.path}): the disk has another history",
                    )
                )
        want, got = nearest(position, disk), dtree.named_ancestor(dtree.current)
        if want != got:
            out.append(
                _mismatch(
                    dtree.path,
                    f"disk {disk!r} is at {got!r}, but the VM is at "
                    f"{want!r} ({tree.path}): the disk has another history",
                )
            )
    return out


def _mismatch(path: Path, what: str) -> VmMismatch:
    return VmMismatch(f"{path}: {what}; see 'quiesce-host vm check {path.parent.parent}'", path)


def stray_folders(tree: VmTree) -> list[str]:
    """Disk folders in the VM folder that the tree does not list."""
    known = set(tree.disk_names())
    return sorted(
        str(p)
        for p in tree.folder.iterdir()
        if p.is_dir() and p.name not in known and (p / TREE).exists()
    )


def check_vm_folder(folder: str | Path) -> list[str]:
    """Every problem of the VM in ``folder`` and of each of its disks (empty: clean)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiskError(f"{folder}: no such VM folder", folder)
    lock = FolderLock(folder, shared=True)
    try:
        return examine_vm(folder, lambda name: check_folder(folder / name))
    finally:
        lock.release()


def member_problems(disk_folder: str | Path) -> list[str]:
    """For ``disk check`` of a disk of a VM: the ways it disagrees with the VM's tree (and a
    VM operation pending over it). Empty for a disk of no VM. Reads the trees without locks
    (each is replaced atomically); changes nothing."""
    folder = Path(disk_folder)
    owner = vm_of(folder)
    if owner is None:
        return []
    if not is_vm(owner):
        return [
            f"{folder / MEMBER}: this disk says it belongs to a VM, but {owner / VM_TREE} "
            "is missing (a disk copied out of its VM?)"
        ]
    try:
        tree = VmTree.load(owner)
    except DiskError as err:
        return [str(err)]
    if folder.name not in tree.disk_names():
        return [f"{folder}: {owner / VM_TREE} does not list this disk folder"]
    problems = []
    if (owner / "intent.json").exists():
        problems.append(
            f"{owner / 'intent.json'}: an interrupted VM operation is pending over this disk; "
            f"the next read-write open of the VM ({owner}) finishes or undoes it"
        )
    wrong = membership(tree, folder.name)
    if wrong is not None:
        return [*problems, str(wrong)]
    if problems:
        return problems  # half way through a VM operation the disks legitimately disagree
    trees: dict[str, Tree] = {}
    for name in tree.disk_names():
        try:
            trees[name] = Tree.load(owner / name)
        except DiskError:
            pass  # that disk's own check tells
    mine = folder / TREE
    return [str(m) for m in disagreements(tree, trees) if m.path == mine]


def examine_vm(folder: Path, check_disk: Callable[[str], list[str]]) -> list[str]:
    """The check itself; the caller holds the VM's lock, and ``check_disk(name)`` gives the
    problems of one disk (``check_folder`` under the disk's own shared lock, or the open
    ``Disk.check`` of the VM that holds it)."""
    problems: list[str] = []
    pending = (folder / "intent.json").exists()
    if pending:
        problems.append(
            f"{folder / 'intent.json'}: an interrupted VM operation is pending; the next "
            "read-write open of the VM finishes or undoes it on every disk first"
        )
    try:
        tree = VmTree.load(folder)
    except DiskError as err:
        return [*problems, str(err)]
    trees: dict[str, Tree] = {}
    for name in tree.disk_names():
        wrong = membership(tree, name)
        if wrong is not None:
            problems.append(str(wrong))
            continue
        problems += check_disk(name)
        try:
            trees[name] = Tree.load(folder / name)
        except DiskError:
            pass  # check_folder told it
    if not pending:  # half way through a VM operation the disks legitimately disagree
        problems += [str(m) for m in disagreements(tree, trees)]
    problems += [
        f"{p}: a disk folder that {folder / VM_TREE} does not list" for p in stray_folders(tree)
    ]
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") and ".tmp-" in p.name:
            problems.append(f"{p}: a temporary file left by an interrupted write")
    return problems
