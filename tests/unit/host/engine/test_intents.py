"""Intent records: each operation reads back the record it wrote, and a record a crash or a
hand edit damaged is refused with intent.json named, before anything acts on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from host.engine.errors import CorruptFile, ForeignFile
from host.engine.intents import (
    CreateIntent,
    DropIntent,
    Intent,
    MergeAllIntent,
    MergeIntent,
    RevertIntent,
    parse_intent,
)
from host.engine.sparse import GRAIN
from host.engine.tree import Tree

PATH = Path("/nonexistent/disk/intent.json")  # parsing never touches the folder
BASE, D1, D2 = "disk.vmdk", "disk-000001.vmdk", "disk-000002.vmdk"


def after_tree() -> Tree:
    """The tree a delete of 'b' ends with: the base holds 'a', D1 takes the writes."""
    data = {
        "size": 64 * GRAIN,
        "base": BASE,
        "current": D1,
        "layers": {BASE: None, D1: BASE},
        "snapshots": [{"name": "a", "layer": BASE}],
    }
    return Tree(data, PATH.with_name("tree.json"))


def from_disk(record: dict[str, Any]) -> Intent:
    """What the next open reads: the record as written to intent.json, parsed."""
    return parse_intent(json.loads(json.dumps(record, sort_keys=True)), PATH)


EVERY_OPERATION = [
    CreateIntent(D2),
    RevertIntent(D2, D1),
    DropIntent((D2,), after_tree()),
    MergeIntent(D2, D1, after_tree()),
    MergeAllIntent((BASE, D1, D2), ("disk-000003.vmdk",)),
]


@pytest.mark.parametrize("intent", EVERY_OPERATION, ids=lambda i: i.op)
def test_every_operation_reads_back_the_record_it_wrote(intent: Intent) -> None:
    again = from_disk(intent.record())
    assert type(again) is type(intent)
    assert again.record() == intent.record()


def test_a_merge_record_names_both_layers_and_the_tree_it_ends_with() -> None:
    record = {"op": "merge", "src": D2, "dst": D1, "tree": after_tree().to_json()}
    merge = from_disk(record)
    assert isinstance(merge, MergeIntent)
    assert (merge.src, merge.dst) == (D2, D1)
    assert merge.after.current == D1 and merge.after.path == PATH.with_name("tree.json")


@pytest.mark.parametrize(
    ("record", "complaint"),
    [
        ({"op": "create"}, "malformed create record ('new' is missing"),
        ({"op": "revert", "new": D2}, "malformed revert record ('discard' is missing"),
        ({"op": "drop", "files": D2, "tree": {}}, "malformed drop record ('files' is missing"),
        ({"op": "drop", "files": [D2]}, "malformed drop record ('tree' is missing"),
        ({"op": "merge", "src": D2, "dst": 7, "tree": {}}, "('dst' is missing or not a file"),
        ({"op": "merge", "src": D2, "dst": D1, "tree": {"size": 1}}, "'tree' is not a whole"),
        ({"op": "merge_all", "chain": [BASE, 1]}, "malformed merge_all record ('chain'"),
        ({"op": "explode"}, "unknown operation 'explode'"),
        ({"new": D2}, "the intent record has no 'op'"),
        ([1, 2], "the intent record has no 'op'"),
    ],
)
def test_a_damaged_record_is_a_corrupt_intent_json(record: object, complaint: str) -> None:
    with pytest.raises(CorruptFile, match="intent.json: .*") as caught:
        parse_intent(record, PATH)
    assert complaint in str(caught.value)
    assert caught.value.path == PATH


def test_a_layer_name_that_leads_out_of_the_folder_is_refused_before_anything_is_removed() -> None:
    with pytest.raises(ForeignFile, match=r"intent.json: layer '\.\./\.\./etc/passwd'"):
        parse_intent({"op": "create", "new": "../../etc/passwd"}, PATH)


def test_while_a_merge_waits_the_snapshots_it_deletes_are_hidden() -> None:
    listed = [{"name": "a", "layer": BASE}, {"name": "b", "layer": D1}]
    assert MergeIntent(D2, D1, after_tree()).snapshots_after(listed) == [listed[0]]
    assert DropIntent((D2,), after_tree()).snapshots_after(listed) == [listed[0]]
    assert MergeAllIntent((BASE, D1), ()).snapshots_after(listed) == []
    # a create or revert is undone or finished as a whole: nothing to hide meanwhile
    assert CreateIntent(D2).snapshots_after(listed) == listed
    assert RevertIntent(D2, D1).snapshots_after(listed) == listed
