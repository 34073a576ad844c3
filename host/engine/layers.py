"""The layer files of one disk folder, each opened the first time it is needed and kept open.

A layer is the flat base or a sparse delta (``chain.Layer``). ``open_layer`` opens one by the
name the tree gives it, refusing a name or a symlink that leads out of the folder; the check
uses it to open each layer on its own. ``Layers`` is the set a ``Disk`` holds open while it
is: ``layers[name]`` opens on first use, ``close`` and ``remove`` (the files, durably, with
their pending logs) end a layer's life, ``describe`` lists them for ``disk info``.

Raises what the layer classes raise: ForeignFile, CorruptFile, ChainFileMissing (for a
delta, with the part the file plays in the tree and what to do), DiskError, NoSpace.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host.engine.chain import Layer, allocated
from host.engine.durable import pending_log_path, unlink_durably
from host.engine.errors import ChainFileMissing
from host.engine.flat import FlatBase
from host.engine.names import BASE_NAME, inside, safe_name
from host.engine.sparse import GRAIN, SparseExtent
from host.engine.tree import Tree


def open_layer(folder: Path, tree: Tree, name: str, writable: bool) -> Layer:
    """Open layer ``name`` of ``tree`` (the base, or a delta of the folder)."""
    if name == BASE_NAME:
        return FlatBase(folder, tree.size, writable)
    owner = tree.path
    path = inside(folder, safe_name(folder, name, "layer", owner), owner)
    return SparseExtent(path, writable, tree.size)


class Layers:
    """The open layers of a disk; ``tree`` gives the disk's tree as it is at each call."""

    def __init__(self, folder: Path, writable: bool, tree: Callable[[], Tree]) -> None:
        self.folder = folder
        self.writable = writable
        self._tree = tree
        self._open: dict[str, Layer] = {}

    @property
    def size(self) -> int:
        return self._tree().size

    def __getitem__(self, name: str) -> Layer:
        """Layer ``name``, opened now if it is not open yet."""
        layer = self._open.get(name)
        if layer is None:
            tree = self._tree()
            try:
                layer = open_layer(self.folder, tree, name, self.writable)
            except ChainFileMissing as err:
                if name == BASE_NAME:
                    raise
                raise ChainFileMissing(
                    f"{err} ({tree.role(name)}); restore the file, or see "
                    f"'quiesce-host disk check {self.folder}' for everything that is wrong",
                    err.path,
                ) from err
            self._open[name] = layer
        return layer

    def grains(self, name: str) -> int:
        """The grains delta ``name`` holds (data or zeroed); 0 for the base."""
        layer = self[name]
        return len(allocated(layer)) if isinstance(layer, SparseExtent) else 0

    def names(self) -> list[str]:
        """The layers open now."""
        return list(self._open)

    def close(self, *names: str) -> None:
        """Close the layers ``names`` (those not open are fine)."""
        for name in names:
            layer = self._open.pop(name, None)
            if layer is not None:
                layer.close()

    def close_all(self) -> None:
        self.close(*self._open)

    def remove(self, *names: str) -> None:
        """Delete the files of the deltas ``names`` and their pending logs, durably; the base
        is never removed. The names come from a validated tree or intent record."""
        paths = [self.folder / n for n in names if n != BASE_NAME]
        unlink_durably(*paths, *(pending_log_path(p) for p in paths))

    def describe(self, tree: Tree) -> list[dict[str, Any]]:
        """Each layer of ``tree`` as ``disk info`` shows it: the current chain from the top
        down, then the other branches' layers by name."""
        chain = tree.chain(tree.current)
        out = []
        for name in chain[::-1] + sorted(set(tree.layers) - set(chain)):
            layer = self[name]
            snap = tree.by_layer(name)
            entry: dict[str, Any] = {
                "file": name,
                "parent": tree.layers[name],
                "cid": f"{layer.read_cid():08x}",
                "snapshot": snap["name"] if snap else None,
                "in_current_chain": name in chain,
                "file_bytes": os.stat(layer.path).st_size,
            }
            if isinstance(layer, SparseExtent):
                entry["allocated_bytes"] = self.grains(name) * GRAIN
            out.append(entry)
        return out
