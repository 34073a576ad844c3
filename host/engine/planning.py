"""Delete planning: what the snapshot tree must become once snapshots are gone.

A layer no snapshot names any more and that is not the current one is either dropped
(nothing descends from it) or takes in its one child delta (a merge); a layer two branches
still need stays, unnamed. Pure over a ``Tree``: nothing here touches a file.
"""

from __future__ import annotations

from host.engine.tree import Tree


def tidy_step(tree: Tree) -> tuple[str, str | None, Tree] | None:
    """The next step that makes every read-only layer needed again: (layer, None, after)
    drops an unnamed layer nothing descends from; (layer, child, after) merges the one child
    of an unnamed layer into it, the merged layer taking the child's place. None: tidy."""
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
        return layer, None, after
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
    return layer, child, after
