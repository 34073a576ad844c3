"""The snapshot tree: which layer file descends from which, and which snapshot names which.

One JSON file beside the disk, ``tree.json``, replaced atomically (``atomic_write``). A
snapshot names the layer that was writable when it was taken and became read-only then; the
writable layer is ``current``; a layer whose snapshot was deleted but which still has two or
more children stays as an unnamed layer until a later delete lets it be merged::

    {"format": "quiesce-disk/1", "size": 67108864, "base": "disk.vmdk",
     "current": "disk-000002.vmdk",
     "layers": {"disk.vmdk": null, "disk-000001.vmdk": "disk.vmdk",
                "disk-000002.vmdk": "disk-000001.vmdk"},
     "snapshots": [{"name": "before-upgrade", "layer": "disk.vmdk", "created": "...", ...},
                   {"name": "after", "layer": "disk-000001.vmdk", ...}]}

The changes a snapshot operation makes (``taking``, ``reverting``, ``updating``) are
computed here on a copy, checked first (a snapshot's name and consistency level, a name
taken, a chain too deep), and saved by the caller once the files are ready.

Raises CorruptFile (a damaged or inconsistent tree), ChainBroken (a parent loop),
SnapshotNotFound, SnapshotExists, ChainTooDeep, DiskError (a bad name or consistency).
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

from agent.protocol import Consistency
from host.engine.durable import read_json, write_json
from host.engine.errors import (
    ChainBroken,
    ChainTooDeep,
    CorruptFile,
    DiskError,
    SnapshotExists,
    SnapshotNotFound,
)
from host.engine.names import BASE_NAME, SAFE_NAME
from host.engine.sparse import GRAIN

TREE = "tree.json"
FORMAT = "quiesce-disk/1"
MAX_CHAIN = 32  # snapshots (read-only layers) in one chain
DELTA_NAME = re.compile(r"^disk-(\d{6})\.vmdk$")
SNAPSHOT_NAME = re.compile(r"^[^\x00-\x1f/\x7f]{1,128}$")


class Tree:
    """The parsed, validated ``tree.json``."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.path = path
        self.size: int = data["size"]
        self.base: str = data["base"]
        self.current: str = data["current"]
        self.layers: dict[str, str | None] = dict(data["layers"])
        self.snapshots: list[dict[str, Any]] = [dict(s) for s in data["snapshots"]]
        self.validate()

    @classmethod
    def new(cls, folder: Path, size: int) -> Tree:
        return cls(
            {
                "size": size,
                "base": BASE_NAME,
                "current": BASE_NAME,
                "layers": {BASE_NAME: None},
                "snapshots": [],
            },
            folder / TREE,
        )

    @classmethod
    def load(cls, folder: Path) -> Tree:
        path = folder / TREE
        try:
            data = read_json(path)
        except FileNotFoundError as err:
            raise CorruptFile(
                f"{path}: missing: {folder} is not a disk made by quiesce-host "
                "(create one with 'quiesce-host disk create')",
                path,
            ) from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptFile(f"{path}: not a {FORMAT} tree", path)
        for key, kind in (
            ("size", int),
            ("base", str),
            ("current", str),
            ("layers", dict),
            ("snapshots", list),
        ):
            if not isinstance(data.get(key), kind):
                raise CorruptFile(f"{path}: '{key}' is missing or not a {kind.__name__}", path)
        return cls(data, path)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "size": self.size,
            "base": self.base,
            "current": self.current,
            "layers": dict(self.layers),
            "snapshots": copy.deepcopy(self.snapshots),
        }

    def copy(self) -> Tree:
        return Tree(self.to_json(), self.path)

    def save(self) -> None:
        self.validate()
        write_json(self.path, self.to_json())

    def validate(self) -> None:
        p = self.path
        if self.size <= 0 or self.size % GRAIN:
            raise CorruptFile(f"{p}: size {self.size} is not a positive multiple of 64 KiB", p)
        if self.base != BASE_NAME or self.layers.get(self.base, "") is not None:
            raise CorruptFile(f"{p}: the base must be {BASE_NAME} with no parent", p)
        for name, parent in self.layers.items():
            if not isinstance(name, str) or not SAFE_NAME.match(name):
                raise CorruptFile(f"{p}: layer name {name!r} is not a plain file name", p)
            if name != self.base and (not isinstance(parent, str) or parent not in self.layers):
                raise ChainBroken(
                    f"{p}: layer {name} has parent {parent!r}, which is not a layer of this disk", p
                )
        for name in self.layers:
            self.chain(name)  # raises on loops
        if self.current not in self.layers:
            raise CorruptFile(f"{p}: current layer {self.current!r} is not a layer", p)
        seen: set[str] = set()
        for snap in self.snapshots:
            if not isinstance(snap, dict) or not isinstance(snap.get("name"), str):
                raise CorruptFile(f"{p}: a snapshot entry has no name", p)
            name, layer = snap["name"], snap.get("layer")
            if name in seen:
                raise CorruptFile(f"{p}: snapshot {name!r} appears twice", p)
            seen.add(name)
            if layer not in self.layers or layer == self.current:
                raise CorruptFile(
                    f"{p}: snapshot {name!r} names layer {layer!r}, which is not "
                    "a read-only layer of this disk",
                    p,
                )
        if len({s["layer"] for s in self.snapshots}) != len(self.snapshots):
            raise CorruptFile(f"{p}: two snapshots name the same layer", p)

    # -- queries --------------------------------------------------------------------------

    def chain(self, layer: str) -> list[str]:
        """``[base, ..., layer]``; a parent loop is a ChainBroken."""
        out = [layer]
        seen = {layer}
        parent = self.layers.get(layer)
        while parent is not None:
            if parent in seen:
                raise ChainBroken(
                    f"{self.path}: parent loop: {' -> '.join(out)} -> {parent}", self.path
                )
            out.append(parent)
            seen.add(parent)
            parent = self.layers.get(parent)
        if out[-1] != self.base:
            raise ChainBroken(f"{self.path}: {layer} does not descend from {self.base}", self.path)
        return out[::-1]

    def children(self, layer: str) -> list[str]:
        return sorted(n for n, p in self.layers.items() if p == layer)

    def snapshot(self, name: str) -> dict[str, Any]:
        for snap in self.snapshots:
            if snap["name"] == name:
                return snap
        raise SnapshotNotFound(
            f"{self.path.parent}: no snapshot named {name!r} (see 'quiesce-host snapshot list')",
            self.path,
        )

    def by_layer(self, layer: str) -> dict[str, Any] | None:
        for snap in self.snapshots:
            if snap["layer"] == layer:
                return snap
        return None

    def role(self, name: str) -> str:
        """What ``name`` is for, e.g. "this file holds snapshot 'a' and is the parent of X"."""
        parts = []
        if name == self.current:
            parts.append("takes the writes")
        snaps = [repr(s["name"]) for s in self.snapshots if s["layer"] == name]
        if snaps:
            parts.append(f"holds snapshot {', '.join(snaps)}")
        kids = self.children(name)
        if kids:
            parts.append(f"is the parent of {', '.join(kids)}")
        if not parts:
            return "this file is an unnamed layer of the tree"
        return "this file " + (
            " and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else parts[0]
        )

    def named_ancestor(self, layer: str) -> str | None:
        """The snapshot whose state ``layer`` was started from (nearest named ancestor)."""
        for name in reversed(self.chain(layer)[:-1]):
            snap = self.by_layer(name)
            if snap is not None:
                return str(snap["name"])
        return None

    def depth(self) -> int:
        """Read-only layers below the current one (the base counts once it is read-only)."""
        return len(self.chain(self.current)) - 1

    def next_delta_name(self, folder: Path) -> str:
        numbers = [0]
        for name in list(self.layers) + [p.name for p in folder.iterdir()]:
            m = DELTA_NAME.match(name)
            if m:
                numbers.append(int(m[1]))
        return f"disk-{max(numbers) + 1:06d}.vmdk"

    def stray_deltas(self) -> list[str]:
        """The delta files in the folder that are no layer of this tree, by name."""
        return sorted(
            p.name
            for p in self.path.parent.iterdir()
            if DELTA_NAME.match(p.name) and p.name not in self.layers
        )

    def listing(self) -> list[dict[str, Any]]:
        """Every snapshot with its parent snapshot, children and the current position."""
        position = self.named_ancestor(self.current)
        out = []
        for snap in self.snapshots:
            entry = {k: v for k, v in snap.items() if k not in ("report", "artifacts")}
            entry["parent"] = self.named_ancestor(snap["layer"])
            entry["children"] = [
                s["name"]
                for s in self.snapshots
                if s is not snap and self.named_ancestor(s["layer"]) == snap["name"]
            ]
            entry["is_current_position"] = snap["name"] == position
            out.append(entry)
        return out

    # -- changes: each returns a new, checked tree that the caller saves -------------------

    def taking(
        self,
        name: str,
        new: str,
        *,
        description: str,
        consistency: str,
        report: dict[str, Any],
        artifacts: dict[str, Any],
    ) -> Tree:
        """The tree once snapshot ``name`` is taken: the current layer is frozen under it and
        the new delta ``new`` takes the writes."""
        folder = self.path.parent
        if not SNAPSHOT_NAME.match(name):
            raise DiskError(
                f"{folder}: snapshot name {name!r} must be 1-128 printable characters without '/'",
                folder,
            )
        self._check_consistency(consistency)
        if any(s["name"] == name for s in self.snapshots):
            raise SnapshotExists(f"{folder}: a snapshot named {name!r} exists already", folder)
        if self.depth() + 1 > MAX_CHAIN:
            current = folder / self.current
            raise ChainTooDeep(
                f"{current}: the chain already has {self.depth()} snapshots, the most one "
                "chain may have; delete one first",
                current,
            )
        entry = {
            "name": name,
            "layer": self.current,
            "description": description,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "consistency": consistency,
            "report": report,
            "artifacts": artifacts,
        }
        after = self.copy()
        after.snapshots.append(entry)
        after.layers[new] = self.current
        after.current = new
        return after

    def reverting(self, name: str, new: str) -> Tree:
        """The tree once the disk is reverted to ``name``: the current layer is discarded (the
        base is kept) and the new delta ``new`` on the snapshot's layer takes the writes."""
        target = self.snapshot(name)["layer"]
        after = self.copy()
        after.layers[new] = target
        after.current = new
        if self.current != BASE_NAME:
            del after.layers[self.current]
        return after

    def updating(self, name: str, fields: dict[str, Any]) -> Tree:
        """The tree with the ``fields`` given (not None) replaced in ``name``'s record."""
        if fields.get("consistency") is not None:
            self._check_consistency(fields["consistency"])
        after = self.copy()
        after.snapshot(name).update({k: v for k, v in fields.items() if v is not None})
        return after

    def _check_consistency(self, consistency: str) -> None:
        if consistency not in list(Consistency):
            raise DiskError(
                f"{self.path.parent}: consistency {consistency!r} must be one of "
                f"{', '.join(Consistency)}",
                self.path.parent,
            )
