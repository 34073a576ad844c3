"""The tree's changes for snapshot create, revert and update: computed on a copy, checked
before any file is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from host.engine.errors import ChainTooDeep, DiskError, SnapshotExists, SnapshotNotFound
from host.engine.sparse import GRAIN
from host.engine.tree import MAX_CHAIN, Tree

FOLDER = Path("/nonexistent/disk")  # the trees are never saved
BASE, D1, D2 = "disk.vmdk", "disk-000001.vmdk", "disk-000002.vmdk"
RECORD = {"description": "", "consistency": "crash", "report": {}, "artifacts": {}}


def take(tree: Tree, name: str, new: str, **fields: object) -> Tree:
    return tree.taking(name, new, **{**RECORD, **fields})  # type: ignore[arg-type]


def test_taking_a_snapshot_freezes_the_current_layer_and_a_new_delta_takes_the_writes() -> None:
    fresh = Tree.new(FOLDER, 64 * GRAIN)
    after = take(fresh, "before-upgrade", D1, consistency="application")
    assert after.snapshot("before-upgrade")["layer"] == BASE
    assert after.snapshot("before-upgrade")["consistency"] == "application"
    assert after.current == D1 and after.layers == {BASE: None, D1: BASE}
    assert fresh.snapshots == [] and fresh.current == BASE  # the old tree is untouched


@pytest.mark.parametrize(
    ("name", "fields", "error", "message"),
    [
        ("a/b", {}, DiskError, "snapshot name 'a/b' must be 1-128 printable characters"),
        ("", {}, DiskError, "must be 1-128 printable characters"),
        ("x", {"consistency": "perfect"}, DiskError, "consistency 'perfect' must be one of"),
        ("a", {}, SnapshotExists, "a snapshot named 'a' exists already"),
    ],
)
def test_a_snapshot_that_cannot_be_taken_is_refused_before_anything_changes(
    name: str, fields: dict[str, object], error: type[Exception], message: str
) -> None:
    tree = take(Tree.new(FOLDER, 64 * GRAIN), "a", D1)
    with pytest.raises(error, match=message):
        take(tree, name, D2, **fields)


def test_the_snapshot_after_the_deepest_chain_is_refused() -> None:
    tree = Tree.new(FOLDER, 64 * GRAIN)
    for i in range(1, MAX_CHAIN + 1):
        tree = take(tree, f"s{i}", f"disk-{i:06d}.vmdk")
    with pytest.raises(ChainTooDeep, match=f"the chain already has {MAX_CHAIN} snapshots"):
        take(tree, "one-more", "disk-000099.vmdk")


def test_reverting_discards_the_current_delta_and_starts_one_on_the_snapshot() -> None:
    tree = take(take(Tree.new(FOLDER, 64 * GRAIN), "a", D1), "b", D2)
    after = tree.reverting("a", "disk-000003.vmdk")
    assert after.current == "disk-000003.vmdk"
    assert after.layers == {BASE: None, D1: BASE, "disk-000003.vmdk": BASE}
    assert D2 not in after.layers  # what was written since 'b' is gone
    with pytest.raises(SnapshotNotFound):
        tree.reverting("nope", "disk-000003.vmdk")


def test_updating_replaces_only_the_fields_given() -> None:
    tree = take(Tree.new(FOLDER, 64 * GRAIN), "a", D1, description="before")
    after = tree.updating("a", {"consistency": "application", "description": None})
    assert after.snapshot("a")["consistency"] == "application"
    assert after.snapshot("a")["description"] == "before"
    with pytest.raises(DiskError, match="consistency 'perfect'"):
        tree.updating("a", {"consistency": "perfect"})
