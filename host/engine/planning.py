"""Delete planning: what the snapshot tree must become once snapshots are gone, and what
getting there copies.

A layer that no snapshot names any more and that does not take the writes is either dropped
(nothing descends from it) or takes in its one child delta, the merged layer taking the
child's place; a layer that two branches still need stays, unnamed, until a later delete
leaves it one child. ``tidy_step`` gives the next such step, ``delete_cost`` adds up the
grains the merges of a delete would copy.

Pure over a ``Tree`` and a count of allocated grains per layer: nothing here touches a file.
Raises SnapshotNotFound (``without``, ``delete_cost``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from host.engine.sparse import GRAIN
from host.engine.tree import Tree


@dataclass(frozen=True)
class Step:
    """One step toward a tree in which every read-only layer is needed."""

    layer: str  # the unnamed layer the step tidies
    child: str | None  # None: ``layer`` is dropped; else this delta is merged into ``layer``
    after: Tree  # the tree once the step is done


def tidy_step(tree: Tree) -> Step | None:
    """The next step that makes every read-only layer needed again; None: tidy."""
    named = {s["layer"] for s in tree.snapshots}
    todo = [
        n
        for n in tree.layers
        if n not in named and n != tree.current and len(tree.children(n)) <= 1
    ]
    if not todo:
        return None
    layer = todo[0]
    after = tree.copy()
    kids = after.children(layer)
    if not kids:
        del after.layers[layer]
        return Step(layer, None, after)
    child = kids[0]
    for n, p in list(after.layers.items()):
        if p == child:
            after.layers[n] = layer
    del after.layers[child]
    if after.current == child:
        after.current = layer
    for snap in after.snapshots:
        if snap["layer"] == child:
            snap["layer"] = layer
    return Step(layer, child, after)


def tidy_steps(tree: Tree) -> Iterator[Step]:
    """Every step from ``tree`` to a tidy one, in the order they are carried out."""
    while (step := tidy_step(tree)) is not None:
        yield step
        tree = step.after


def without(tree: Tree, name: str) -> Tree:
    """A copy of ``tree`` without snapshot ``name`` (SnapshotNotFound if there is none)."""
    tree.snapshot(name)
    after = tree.copy()
    after.snapshots = [s for s in after.snapshots if s["name"] != name]
    return after


def delete_cost(tree: Tree, name: str, grains: Callable[[str], int]) -> int:
    """Bytes that deleting ``name`` would copy: every grain of each delta that a merge of the
    delete moves into its parent (``grains(layer)``: the grains that layer holds). 0 when
    the delete only drops layers or a name."""
    merged = [s.child for s in tidy_steps(without(tree, name)) if s.child is not None]
    return sum(grains(child) for child in merged) * GRAIN
