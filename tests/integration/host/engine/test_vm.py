"""A VM of three disks: one snapshot tree over all of them, every disk cut, reverted and
deleted as one, qemu-img the judge of every disk of every snapshot; bad input refused with
the disk and the file named, and nothing changed."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.engine.errors import (
    ChainTooDeep,
    DiskError,
    ForeignFile,
    SnapshotExists,
    SnapshotNotFound,
    VmMismatch,
)
from host.engine.tree import MAX_CHAIN
from host.engine.vm import VM, open_any
from host.engine.vmcheck import check_vm_folder
from tests.helpers.disks import GRAIN, MiB, need_qemu, run
from tests.helpers.vms import DISKS, qemu_judges_every_disk

SIZE = 2 * MiB


@pytest.fixture
def vm(tmp_path: Path) -> VM:
    v = VM.create(tmp_path / "vm", [(n, SIZE) for n in DISKS])
    yield v  # type: ignore[misc]
    v.close()


def exported(vm: VM, disk: str, snapshot: str | None, tmp: Path) -> bytes:
    vm.disks[disk].export_raw(tmp / "x.raw", snapshot=snapshot, sync=False)
    return (tmp / "x.raw").read_bytes()


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file of a VM folder and a digest of its bytes (the lock files aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def write_all(vm: VM, tag: bytes) -> None:
    for i, (name, disk) in enumerate(vm.disks.items()):
        disk.write(i * GRAIN + 7, tag + name.encode())


def test_create_makes_a_folder_of_disks_and_one_tree(vm: VM) -> None:
    info = vm.info()
    assert [d["name"] for d in info["disks"]] == list(DISKS)
    assert all(d["size"] == SIZE and d["snapshots"] == 0 for d in info["disks"])
    assert info["snapshots"] == 0 and info["position"] is None
    assert sorted(p.name for p in vm.folder.iterdir()) == sorted([".lock", "vm.json", *DISKS])
    for name in DISKS:
        assert json.loads((vm.folder / name / "vm-disk.json").read_text())["name"] == name
    assert vm.check() == []


def test_a_snapshot_cuts_every_disk_and_keeps_one_record(vm: VM, tmp_path: Path) -> None:
    write_all(vm, b"one-")
    snap = vm.snapshot_create("a", "first", "application", {"blocked_ms": 3}, {"lsn": "0/1"})
    assert set(snap["layers"]) == set(DISKS)
    write_all(vm, b"two-")
    vm.snapshot_create("b")
    write_all(vm, b"now-")
    for i, name in enumerate(DISKS):
        assert exported(vm, name, "a", tmp_path)[i * GRAIN + 7 :][:4] == b"one-"
        assert exported(vm, name, "b", tmp_path)[i * GRAIN + 7 :][:4] == b"two-"
        assert vm.disks[name].read(i * GRAIN + 7, 4) == b"now-"
    got = vm.snapshot_get("a")
    assert got["report"] == {"blocked_ms": 3} and got["artifacts"] == {"lsn": "0/1"}
    assert got["consistency"] == "application" and got["description"] == "first"
    listing = {s["name"]: s for s in vm.snapshot_list()}
    assert listing["a"]["children"] == ["b"] and listing["b"]["parent"] == "a"
    assert listing["b"]["is_current_position"] and "report" not in listing["a"]
    with pytest.raises(SnapshotExists):
        vm.snapshot_create("a")
    assert vm.check() == []


def test_revert_delete_and_delete_all_act_on_every_disk(vm: VM, tmp_path: Path) -> None:
    need_qemu()
    write_all(vm, b"A")
    vm.snapshot_create("a")
    write_all(vm, b"B")
    vm.snapshot_create("b")
    write_all(vm, b"X")
    vm.snapshot_revert("a")
    for i, name in enumerate(DISKS):
        assert vm.disks[name].read(i * GRAIN + 7, 1) == b"A"
    write_all(vm, b"C")
    vm.snapshot_create("c")  # a second branch from a
    listing = {s["name"]: s for s in vm.snapshot_list()}
    assert listing["a"]["children"] == ["b", "c"]
    assert qemu_judges_every_disk(vm, tmp_path) == 3 * 4  # current + 3 snapshots per disk
    b = {n: exported(vm, n, "b", tmp_path) for n in DISKS}
    vm.snapshot_delete("a")  # two branches need a's layer: it stays, unnamed, on every disk
    assert {n: exported(vm, n, "b", tmp_path) for n in DISKS} == b
    assert [s["name"] for s in vm.snapshot_list()] == ["b", "c"]
    assert all(not d.tree.by_layer("disk.vmdk") for d in vm.disks.values())
    vm.snapshot_delete("b")  # now merged away on every disk
    assert qemu_judges_every_disk(vm, tmp_path) == 3 * 2
    assert vm.check() == []
    with pytest.raises(SnapshotNotFound, match="'b'"):
        vm.snapshot_delete("b")
    current = {n: d.read(0, SIZE) for n, d in vm.disks.items()}
    vm.snapshot_delete_all()
    assert {n: d.read(0, SIZE) for n, d in vm.disks.items()} == current
    assert (
        vm.snapshot_list() == []
        and json.loads((vm.folder / "vm.json").read_text())["snapshots"] == []
    )
    assert all(d.tree.layers == {"disk.vmdk": None} for d in vm.disks.values())
    assert qemu_judges_every_disk(vm, tmp_path) == 3
    assert vm.check() == []


def test_the_tree_survives_a_reopen_and_an_update_reaches_every_disk(vm: VM) -> None:
    vm.snapshot_create("a", consistency="crash")
    vm.snapshot_update("a", consistency="filesystem", report={"frozen": ["/srv"]})
    folder = vm.folder
    vm.close()
    with VM.open(folder) as again:
        assert again.snapshot_get("a")["report"] == {"frozen": ["/srv"]}
        assert all(d.snapshot_get("a")["consistency"] == "filesystem" for d in again.disks.values())


def test_a_vm_has_at_most_32_snapshots_in_a_chain(tmp_path: Path) -> None:
    with VM.create(tmp_path / "vm", [(n, GRAIN) for n in DISKS], preallocate=False) as vm:
        for i in range(MAX_CHAIN):
            vm.snapshot_create(f"s{i}")
        before = fingerprint(vm.folder)
        with pytest.raises(ChainTooDeep, match="delete one first"):
            vm.snapshot_create("one-too-many")
        assert fingerprint(vm.folder) == before
        vm.snapshot_delete("s3")
        vm.snapshot_create("fits-again")
        assert len(vm.snapshot_list()) == MAX_CHAIN
        assert vm.check() == []


def test_a_disk_added_later_did_not_exist_at_the_earlier_snapshots(vm: VM, tmp_path: Path) -> None:
    need_qemu()
    write_all(vm, b"A")
    vm.snapshot_create("early")
    vm.add_disk("late", SIZE)
    vm.disks["late"].write(0, b"late")
    vm.snapshot_create("after")
    assert "late" not in vm.snapshot_get("early")["layers"]
    assert "late" in vm.snapshot_get("after")["layers"]
    before = fingerprint(vm.folder)
    with pytest.raises(DiskError, match="disk 'late' did not exist at snapshot 'early'"):
        vm.snapshot_revert("early")
    with pytest.raises(DiskError, match="disk 'late' did not exist at snapshot 'early'"):
        vm.export_disk_raw("late", tmp_path / "late.raw", "early")
    with pytest.raises(DiskError, match=r"no disk named 'lat' \(the VM's disks: .*late\)"):
        vm.export_disk_raw("lat", tmp_path / "late.raw", "after")
    assert fingerprint(vm.folder) == before and not (tmp_path / "late.raw").exists()
    vm.export_disk_raw("late", tmp_path / "late.raw", "after", sync=False)
    assert (tmp_path / "late.raw").read_bytes()[:4] == b"late"
    vm.snapshot_delete("early")  # the late disk has nothing to merge for it
    vm.snapshot_revert("after")
    assert vm.disks["late"].read(0, 4) == b"late"
    assert qemu_judges_every_disk(vm, tmp_path) == 4 * 2
    folder = vm.folder
    vm.close()
    with VM.open(folder) as again:
        assert again.check() == [] and len(again.disks) == 4


def test_no_write_lands_on_one_disk_after_the_cut_and_another_before_it(vm: VM) -> None:
    """A writer alternates a counter over the disks, one write after the other; a cut taken
    meanwhile holds a prefix of that sequence: the counters on its disks differ by at most
    one, and the higher ones come first in the disks' order."""
    disks = list(vm.disks.values())
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for d in disks:
                d.write(0, n.to_bytes(8, "little"))

    t = threading.Thread(target=writer)
    t.start()
    try:
        for i in range(20):
            vm.snapshot_create(f"s{i}")
    finally:
        stop.set()
        t.join(timeout=30)
    for s in vm.snapshot_list():
        counts = []
        for d in disks:
            d.export_raw(vm.folder / "cut.raw", snapshot=s["name"], sync=False)
            counts.append(int.from_bytes((vm.folder / "cut.raw").read_bytes()[:8], "little"))
        (vm.folder / "cut.raw").unlink()
        assert counts == sorted(counts, reverse=True) and counts[0] - counts[-1] <= 1, counts


# -- bad input: clear errors naming the disk and the file, nothing changed -------------------


def refused(folder: Path, error: type[DiskError], *words: str) -> str:
    before = fingerprint(folder)
    with pytest.raises(error) as caught:
        VM.open(folder).close()
    message = str(caught.value)
    for w in words:
        assert w in message, message
    assert fingerprint(folder) == before
    return message


def test_a_disk_of_another_vm_is_refused(vm: VM, tmp_path: Path) -> None:
    folder = vm.folder
    vm.close()
    with VM.create(tmp_path / "other", [("wal", SIZE)]):
        pass
    shutil.rmtree(folder / "wal")
    shutil.copytree(tmp_path / "other" / "wal", folder / "wal")
    refused(folder, ForeignFile, "vm-disk.json", "another VM", "'wal'")
    assert any("another VM" in p for p in check_vm_folder(folder))


def test_a_standalone_disk_put_in_a_vm_is_refused(vm: VM, tmp_path: Path) -> None:
    folder = vm.folder
    vm.close()
    shutil.rmtree(folder / "data")
    Disk.create(folder / "data", SIZE).close()
    refused(folder, ForeignFile, str(folder / "data" / "vm-disk.json"), "missing")


def test_a_missing_disk_folder_is_refused(vm: VM) -> None:
    folder = vm.folder
    vm.close()
    shutil.rmtree(folder / "root")
    refused(folder, VmMismatch, str(folder / "root"), "'root'", "is missing", "vm.json")
    assert any("'root' is missing" in p for p in check_vm_folder(folder))


def test_a_disk_of_another_history_is_refused(vm: VM, tmp_path: Path) -> None:
    vm.snapshot_create("a")
    vm.close()
    folder = vm.folder
    saved = tmp_path / "wal-at-a"
    shutil.copytree(folder / "wal", saved)  # a backup of one disk folder
    with VM.open(folder) as again:
        again.snapshot_create("b")
        again.snapshot_revert("a")
        again.snapshot_create("c")
    shutil.rmtree(folder / "wal")
    shutil.copytree(saved, folder / "wal")  # ... restored over the newer one
    message = refused(folder, VmMismatch, "'wal'", str(folder / "wal" / "tree.json"))
    assert "another history" in message
    assert any("another history" in p for p in check_vm_folder(folder))


def test_a_tree_naming_a_layer_that_does_not_exist_is_refused(vm: VM) -> None:
    vm.snapshot_create("a")
    vm.close()
    folder = vm.folder
    tree = json.loads((folder / "vm.json").read_text())
    tree["snapshots"][0]["layers"]["data"] = "disk-000042.vmdk"
    (folder / "vm.json").write_text(json.dumps(tree))
    refused(folder, VmMismatch, "disk-000042.vmdk", "'data'", "vm.json")
    assert any("disk-000042.vmdk" in p for p in check_vm_folder(folder))


def test_a_damaged_tree_or_intent_is_refused(vm: VM) -> None:
    vm.close()
    folder = vm.folder
    (folder / "intent.json").write_text('{"op": "vm_explode"}')
    refused(folder, DiskError, str(folder / "intent.json"), "vm_explode")
    (folder / "intent.json").unlink()
    (folder / "vm.json").write_text("{")
    refused(folder, DiskError, str(folder / "vm.json"), "not valid JSON")


def test_a_disk_of_a_vm_is_not_snapshotted_on_its_own(vm: VM) -> None:
    folder = vm.folder
    vm.close()
    with pytest.raises(DiskError, match="a disk of the VM"):
        open_any(folder / "wal")
    with open_any(folder / "wal", readonly=True) as disk:  # reading it alone is fine
        assert isinstance(disk, Disk)
    with open_any(folder) as whole:
        assert isinstance(whole, VM)


def test_bad_disk_names_and_sizes_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    for disks, words in (
        ([], "at least one disk"),
        ([("a", SIZE), ("a", SIZE)], "'a' already"),
        ([("../x", SIZE)], "disk name"),
        ([("a", 0)], "size 0"),
    ):
        with pytest.raises(DiskError, match=words):
            VM.create(tmp_path / "vm", disks)
        assert not (tmp_path / "vm").exists()


def test_a_disk_can_start_as_a_copy_of_an_image(tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    image.write_bytes(b"boot" + bytes(GRAIN - 8) + b"sect" + b"\x5a" * GRAIN)
    before = image.read_bytes()
    sources = {"os": image}
    with VM.create(tmp_path / "vm", [("os", SIZE), ("data", SIZE)], sources=sources) as vm:
        assert exported(vm, "os", None, tmp_path) == before + bytes(SIZE - len(before))
        assert exported(vm, "data", None, tmp_path) == bytes(SIZE)
        vm.disks["os"].write(0, b"BOOT")
        vm.add_disk("copy", SIZE, source=image)
        assert exported(vm, "copy", None, tmp_path)[: len(before)] == before
    assert image.read_bytes() == before  # the image itself is never written


def test_a_disk_from_an_image_takes_its_size_when_none_is_given(tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    image.write_bytes(b"\x5a" * (SIZE + 100))  # not a whole grain: the disk rounds up
    seen: list[tuple[int, int]] = []
    with VM.create(
        tmp_path / "vm",
        [("os", None), ("data", SIZE)],
        sources={"os": image},
        progress=lambda name: lambda done, total: seen.append((done, total)),
    ) as vm:
        assert vm.disks["os"].size == SIZE + GRAIN and vm.disks["data"].size == SIZE
        assert exported(vm, "os", None, tmp_path)[: SIZE + 100] == image.read_bytes()
        with pytest.raises(DiskError, match="disk 'more' needs a size, or an image"):
            vm.add_disk("more", None)
    assert seen[-1] == (SIZE + 100, SIZE + 100)


def test_a_bad_image_is_refused_naming_it_before_anything_is_made(tmp_path: Path) -> None:
    need_qemu()
    big = tmp_path / "big.img"
    big.write_bytes(bytes(SIZE + GRAIN))
    qcow2, vmdk = tmp_path / "os.qcow2", tmp_path / "os.vmdk"
    for image, fmt in ((qcow2, "qcow2"), (vmdk, "vmdk")):
        run("qemu-img", "create", "-q", "-f", fmt, image, "1M")
    for sources, words in (
        ({"a": tmp_path / "missing.img"}, "missing.img: cannot read"),
        ({"a": big}, "big.img: the image is .* larger than the disk"),
        ({"b": big}, "an image for no disk of the VM: 'b'"),
        ({"a": qcow2}, "os.qcow2: a qcow2 image, not a raw one; .* qemu-img convert -O raw"),
        ({"a": vmdk}, "os.vmdk: a VMDK .*image, not a raw one"),
        ({"a": tmp_path}, "neither a raw image file nor a block device"),
    ):
        with pytest.raises(DiskError, match=words):
            VM.create(tmp_path / "vm", [("a", SIZE)], sources=sources)
        assert not (tmp_path / "vm").exists()
    with VM.create(tmp_path / "vm", [("a", SIZE)]) as vm:
        before = fingerprint(vm.folder)
        with pytest.raises(DiskError, match="big.img: the image is"):
            vm.add_disk("b", SIZE, source=big)
        assert fingerprint(vm.folder) == before and list(vm.disks) == ["a"]
