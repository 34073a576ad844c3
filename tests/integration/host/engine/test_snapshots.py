"""Snapshot tree semantics: create, list, revert keeping branches, delete merging, limits."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.engine.errors import ChainTooDeep, DiskError, SnapshotExists, SnapshotNotFound
from host.engine.tree import MAX_CHAIN
from tests.helpers.disks import GRAIN, SIZE


def state(disk: Disk, snapshot: str | None, tmp: Path) -> bytes:
    out = tmp / "state.raw"
    disk.export_raw(out, snapshot=snapshot)
    return out.read_bytes()


def test_create_freezes_the_current_layer_and_switches_writes(disk: Disk, tmp_path: Path) -> None:
    disk.write(0, b"before")
    snap = disk.snapshot_create(
        "one", "first", "application", report={"ms": 3}, artifacts={"lsn": "0/16"}
    )
    assert snap["layer"] == "disk.vmdk" and snap["consistency"] == "application"
    assert disk.current_file().name == "disk-000001.vmdk"
    disk.write(0, b"after!")
    assert state(disk, "one", tmp_path)[:6] == b"before"
    assert disk.read(0, 6) == b"after!"
    got = disk.snapshot_get("one")
    assert got["artifacts"] == {"lsn": "0/16"} and got["report"] == {"ms": 3}
    assert got["description"] == "first" and got["created"].endswith("Z")


def test_list_is_a_tree_with_the_current_position(disk: Disk) -> None:
    disk.snapshot_create("a")
    disk.snapshot_create("b")
    disk.snapshot_revert("a")
    disk.snapshot_create("c")
    listing = {s["name"]: s for s in disk.snapshot_list()}
    assert listing["a"]["parent"] is None and listing["a"]["children"] == ["b", "c"]
    assert listing["b"]["parent"] == "a" and listing["c"]["parent"] == "a"
    assert [n for n, s in listing.items() if s["is_current_position"]] == ["c"]
    assert disk.info()["position"] == "c"


def test_revert_discards_the_current_state_and_keeps_other_branches(
    disk: Disk, tmp_path: Path
) -> None:
    disk.write(0, b"A")
    disk.snapshot_create("a")
    disk.write(0, b"B")
    disk.snapshot_create("b")
    disk.write(0, b"X")  # the current state: discarded by the revert
    disk.snapshot_revert("a")
    assert disk.read(0, 1) == b"A"
    assert state(disk, "b", tmp_path)[:1] == b"B"
    disk.write(0, b"C")
    disk.snapshot_revert("b")
    assert disk.read(0, 1) == b"B"
    assert len(disk.tree.layers) == 3  # base, b's layer, the new current: the discarded gone
    assert disk.check() == []


def test_delete_merges_into_the_parent_and_repoints_children(disk: Disk, tmp_path: Path) -> None:
    for i, name in enumerate("abc"):
        disk.write(i * GRAIN, name.encode() * GRAIN)
        disk.snapshot_create(name)
    disk.write(3 * GRAIN, b"d" * 10)
    expected = {n: state(disk, n, tmp_path) for n in "ac"}
    layers = len(disk.tree.layers)
    disk.snapshot_delete("b")
    assert len(disk.tree.layers) == layers - 1
    assert {n: state(disk, n, tmp_path) for n in "ac"} == expected
    with pytest.raises(SnapshotNotFound):
        disk.snapshot_get("b")
    disk.snapshot_delete("a")  # the base is a's layer: its child is merged into the base
    assert state(disk, "c", tmp_path) == expected["c"]
    assert disk.read(3 * GRAIN, 10) == b"d" * 10
    assert disk.check() == []


def test_delete_of_a_branch_point_keeps_both_branches(disk: Disk, tmp_path: Path) -> None:
    disk.write(0, b"A")
    disk.snapshot_create("a")
    disk.write(0, b"B")
    disk.snapshot_create("b")
    disk.snapshot_revert("a")
    disk.write(0, b"C")
    disk.snapshot_delete("a")  # two children depend on its layer: it stays, unnamed
    assert state(disk, "b", tmp_path)[:1] == b"B" and disk.read(0, 1) == b"C"
    disk.snapshot_delete("b")  # now the unnamed layer has one child: merged away
    assert disk.tree.layers == {"disk.vmdk": None}
    assert disk.read(0, 1) == b"C" and disk.check() == []


def test_delete_all_merges_the_current_chain_into_the_base(disk: Disk) -> None:
    model = bytearray(SIZE)
    for i in range(5):
        data = bytes([i + 1]) * (GRAIN + 100)
        disk.write(i * 50_000, data)
        model[i * 50_000 : i * 50_000 + len(data)] = data
        disk.snapshot_create(f"s{i}")
    disk.snapshot_revert("s1")
    disk.write(0, b"branch")
    model = bytearray(disk.read(0, SIZE))
    progress: list[tuple[int, int]] = []
    disk.snapshot_delete_all(progress=lambda d, t: progress.append((d, t)))
    assert disk.read(0, SIZE) == model
    assert sorted(p.name for p in disk.folder.iterdir()) == [
        ".lock",
        "disk-flat.vmdk",
        "disk.vmdk",
        "tree.json",
    ]
    assert disk.current_file().name == "disk.vmdk" and disk.snapshot_list() == []
    assert progress[-1][0] == progress[-1][1] > 0


def test_the_33rd_snapshot_in_a_chain_is_refused(folder: Path) -> None:
    with Disk.create(folder, 4 * GRAIN) as disk:
        for i in range(MAX_CHAIN):
            disk.snapshot_create(f"s{i}")
        with pytest.raises(ChainTooDeep, match="32 snapshots"):
            disk.snapshot_create("one-too-many")
        disk.snapshot_revert("s3")  # another branch is shorter: allowed there
        disk.snapshot_create("branch")
        assert disk.info()["depth"] == 5


def test_names_are_unique_and_validated(disk: Disk) -> None:
    disk.snapshot_create("x")
    with pytest.raises(SnapshotExists):
        disk.snapshot_create("x")
    for bad in ("", "a/b", "tab\there", "x" * 200):
        with pytest.raises(DiskError):
            disk.snapshot_create(bad)
    with pytest.raises(DiskError, match="consistency"):
        disk.snapshot_create("y", consistency="perfect")
    with pytest.raises(SnapshotNotFound, match="'nope'"):
        disk.snapshot_revert("nope")


def test_the_tree_file_is_replaced_atomically_and_describes_the_files(disk: Disk) -> None:
    disk.snapshot_create("a")
    tree = json.loads((disk.folder / "tree.json").read_text())
    assert tree["current"] == "disk-000001.vmdk"
    assert tree["layers"] == {"disk.vmdk": None, "disk-000001.vmdk": "disk.vmdk"}
    assert not [p for p in disk.folder.iterdir() if ".tmp-" in p.name]


def test_a_snapshot_taken_while_writers_run_is_a_clean_cut(disk: Disk) -> None:
    """Each writer writes its counter to its own grain; the snapshot must hold, per grain,
    a value the writer had acknowledged before the snapshot returned."""
    stop = threading.Event()
    acked = [0, 0, 0, 0]

    def writer(k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            disk.write(k * GRAIN, n.to_bytes(8, "little") * (GRAIN // 8))
            acked[k] = n

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(5):
            before = list(acked)
            disk.snapshot_create(f"cut{i}")
            after = list(acked)
            layer = disk.tree.snapshot(f"cut{i}")["layer"]
            chain = disk._build_chain(layer)
            for k in range(4):
                grain = chain.read(k * GRAIN, GRAIN)
                value = int.from_bytes(grain[:8], "little")
                assert grain == grain[:8] * (GRAIN // 8)  # never a torn grain
                assert before[k] <= value <= after[k] + 1
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_readonly_open_refuses_writes_and_shares_the_lock(disk: Disk, folder: Path) -> None:
    disk.snapshot_create("a")
    disk.close()
    with Disk.open(folder, readonly=True) as r1, Disk.open(folder, readonly=True) as r2:
        assert r1.read(0, 10) == r2.read(0, 10)
        with pytest.raises(DiskError, match="read-only"):
            r1.write(0, b"x")
        with pytest.raises(DiskError, match="in use"):
            Disk.open(folder)


def test_a_second_writer_is_refused(disk: Disk, folder: Path) -> None:
    with pytest.raises(DiskError, match="in use by another process"):
        Disk.open(folder)


def test_write_zeroes_in_a_delta_stores_nothing_over_zeros(disk: Disk) -> None:
    disk.snapshot_create("a")
    disk.write_zeroes(0, 10 * GRAIN)
    assert sum(1 for s in disk._layers[disk.tree.current].gt if s) == 0
    disk.write(GRAIN, b"x" * 100)
    disk.snapshot_create("b")
    disk.write_zeroes(GRAIN, GRAIN)
    assert disk.read(GRAIN, 100) == bytes(100)


def test_write_zeroes_on_the_base_punches_holes(folder: Path) -> None:
    with Disk.create(folder, 64 * GRAIN) as disk:
        disk.write(0, b"\xff" * (64 * GRAIN))
        disk.write_zeroes(GRAIN + 7, 10 * GRAIN)
        assert disk.read(GRAIN, 8) == b"\xff" * 7 + b"\0"
        assert disk.read(GRAIN + 7, 10 * GRAIN) == bytes(10 * GRAIN)
        assert disk.read(11 * GRAIN + 7, 1) == b"\xff"


def test_size_is_rounded_up_to_a_grain_and_bounds_are_checked(tmp_path: Path) -> None:
    with Disk.create(tmp_path / "d", 100_000) as disk:
        assert disk.size == 2 * GRAIN
        with pytest.raises(DiskError, match="outside the disk"):
            disk.read(2 * GRAIN - 1, 2)
        with pytest.raises(DiskError, match="outside the disk"):
            disk.write(-1, b"x")
    with pytest.raises(DiskError, match="not empty"):
        Disk.create(tmp_path / "d", GRAIN)
    with pytest.raises(DiskError, match="2 TiB"):
        Disk.create(tmp_path / "huge", 3 * 1024**4)


def test_delete_cost_counts_every_merge_a_delete_sets_off(disk: Disk) -> None:
    disk.write(0, b"A" * GRAIN)
    disk.snapshot_create("a")
    disk.write(0, b"B" * GRAIN)
    disk.snapshot_create("b")
    disk.snapshot_revert("a")  # the base holds 'a' and has two children: 'b' and the current
    disk.write(0, b"C" * 2 * GRAIN)
    assert disk.delete_cost("a") == 0  # the base stays for both branches; nothing moves
    disk.snapshot_delete("a")
    # dropping 'b' leaves the unnamed base with one child, the current delta: it merges down
    assert disk.delete_cost("b") == 2 * GRAIN
    disk.snapshot_delete("b")
    assert disk.info()["chain"] == ["disk.vmdk"]
    assert disk.read(0, 2 * GRAIN) == b"C" * 2 * GRAIN
    with pytest.raises(SnapshotNotFound):
        disk.delete_cost("b")


def test_an_update_replaces_the_record_not_the_data(disk: Disk) -> None:
    disk.write(0, b"A" * GRAIN)
    disk.snapshot_create("q", consistency="crash", report={"step": "inside the window"})
    disk.snapshot_update("q", consistency="application", artifacts={"postgres:main": {"x": 1}})
    snap = disk.snapshot_get("q")
    assert (snap["consistency"], snap["report"], snap["artifacts"]) == (
        "application",
        {"step": "inside the window"},
        {"postgres:main": {"x": 1}},
    )
    assert (
        json.loads((disk.folder / "tree.json").read_text())["snapshots"][0]["consistency"]
        == "application"
    )
    with pytest.raises(DiskError, match="consistency 'perfect'"):
        disk.snapshot_update("q", consistency="perfect")
    with pytest.raises(SnapshotNotFound):
        disk.snapshot_update("nope", consistency="crash")
    disk.snapshot_revert("q")
    assert disk.read(0, GRAIN) == b"A" * GRAIN
