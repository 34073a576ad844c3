"""Delete planning: which layers a delete drops or merges, and what the merges copy.

The trees are built in memory; nothing here touches a file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from host.engine.errors import SnapshotNotFound
from host.engine.planning import delete_cost, tidy_step, tidy_steps, without
from host.engine.sparse import GRAIN
from host.engine.tree import Tree

FOLDER = Path("/nonexistent/disk")  # the trees are never saved
SIZE = 64 * GRAIN
BASE, D1, D2, D3 = "disk.vmdk", "disk-000001.vmdk", "disk-000002.vmdk", "disk-000003.vmdk"


def tree(layers: dict[str, str | None], current: str, snapshots: dict[str, str]) -> Tree:
    """A tree of ``layers`` (file -> parent) whose ``snapshots`` (name -> layer) are taken."""
    return Tree(
        {
            "size": SIZE,
            "base": BASE,
            "current": current,
            "layers": layers,
            "snapshots": [{"name": n, "layer": layer} for n, layer in snapshots.items()],
        },
        FOLDER / "tree.json",
    )


def plan(t: Tree, name: str) -> list[tuple[str, str | None]]:
    """The steps deleting ``name`` sets off: (layer, None) drops, (layer, child) merges."""
    return [(s.layer, s.child) for s in tidy_steps(without(t, name))]


def final(t: Tree, name: str) -> Tree:
    after = without(t, name)
    for step in tidy_steps(after):
        after = step.after
    return after


def test_deleting_a_snapshot_nothing_descends_from_drops_its_layer() -> None:
    # a, then c, then a revert to a: c's layer is a leaf beside the current branch
    t = tree({BASE: None, D1: BASE, D2: BASE}, D2, {"a": BASE, "c": D1})
    assert plan(t, "c") == [(D1, None)]
    after = final(t, "c")
    assert after.layers == {BASE: None, D2: BASE}
    assert [s["name"] for s in after.snapshots] == ["a"]
    assert delete_cost(t, "c", {D1: 40, D2: 7}.__getitem__) == 0  # nothing is copied


def test_deleting_the_snapshot_below_the_current_layer_merges_what_was_written_since() -> None:
    t = tree({BASE: None, D1: BASE, D2: D1}, D2, {"a": BASE, "b": D1})
    assert plan(t, "b") == [(D1, D2)]
    after = final(t, "b")
    assert after.layers == {BASE: None, D1: BASE}
    assert after.current == D1  # the merged layer takes the writes now
    assert delete_cost(t, "b", {D1: 40, D2: 3}.__getitem__) == 3 * GRAIN


def test_the_merged_layer_takes_the_childs_place_for_its_snapshot_and_children() -> None:
    t = tree({BASE: None, D1: BASE, D2: D1, D3: D2}, D3, {"a": BASE, "b": D1, "c": D2})
    assert plan(t, "b") == [(D1, D2)]
    after = final(t, "b")
    assert after.layers == {BASE: None, D1: BASE, D3: D1}
    assert after.snapshot("c")["layer"] == D1
    assert after.current == D3


def test_a_layer_two_branches_need_stays_unnamed_until_one_is_gone() -> None:
    # a on the base, b on one branch, the current layer on another
    t = tree({BASE: None, D1: BASE, D2: BASE}, D2, {"a": BASE, "b": D1})
    assert plan(t, "a") == []
    kept = final(t, "a")
    assert kept.layers == t.layers and kept.by_layer(BASE) is None
    assert delete_cost(t, "a", {D1: 40, D2: 3}.__getitem__) == 0
    # deleting b then drops its branch, and the base takes in the current delta
    assert plan(kept, "b") == [(D1, None), (BASE, D2)]
    assert final(kept, "b").to_json() == Tree.new(FOLDER, SIZE).to_json()
    assert delete_cost(kept, "b", {D1: 40, D2: 3}.__getitem__) == 3 * GRAIN


def test_deleting_every_snapshot_one_by_one_leaves_the_base_alone_as_delete_all_does() -> None:
    t = tree({BASE: None, D1: BASE, D2: D1}, D2, {"a": BASE, "b": D1})
    assert plan(t, "a") == [(BASE, D1)]
    t = final(t, "a")
    assert t.snapshot("b")["layer"] == BASE and t.layers == {BASE: None, D2: BASE}
    assert plan(t, "b") == [(BASE, D2)]
    assert final(t, "b").to_json() == Tree.new(FOLDER, SIZE).to_json()


def test_a_tree_whose_layers_are_all_needed_needs_no_step() -> None:
    assert tidy_step(Tree.new(FOLDER, SIZE)) is None
    assert tidy_step(tree({BASE: None, D1: BASE, D2: D1}, D2, {"a": BASE, "b": D1})) is None


def test_the_cost_of_deleting_a_snapshot_that_does_not_exist_is_an_error() -> None:
    with pytest.raises(SnapshotNotFound, match="no snapshot named 'nope'"):
        delete_cost(Tree.new(FOLDER, SIZE), "nope", lambda layer: 0)
