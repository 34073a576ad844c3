"""VM test helpers: a VM of three disks, its state read back, and qemu-img as the judge of
every disk of every snapshot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from host.engine.vm import VM
from tests.helpers.disks import QEMU_IMG, run

DISKS = ("root", "wal", "data")


@dataclass
class VmState:
    """What a user sees of a VM: each disk's current bytes, and each snapshot's."""

    current: dict[str, bytes]
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)


def read_state(vm: VM, tmp: Path) -> VmState:
    """Every disk's current state and every snapshot of every disk, exported."""
    current = {n: d.read(0, d.size) for n, d in vm.disks.items()}
    snaps: dict[str, dict[str, bytes]] = {}
    for s in vm.snapshot_list():
        snaps[s["name"]] = {}
        for name in s["layers"]:
            vm.disks[name].export_raw(tmp / "s.raw", snapshot=s["name"], sync=False)
            snaps[s["name"]][name] = (tmp / "s.raw").read_bytes()
    return VmState(current, snaps)


def qemu_judges_every_disk(vm: VM, tmp: Path) -> int:
    """``qemu-img info --backing-chain`` and ``qemu-img check`` on each disk's file of every
    snapshot and its current file, and qemu's own reading of each equal to the engine's.
    Returns how many files qemu judged."""
    vm.flush()
    judged = 0
    for name, disk in vm.disks.items():
        tops = [(None, disk.tree.current)] + [(s["name"], s["layer"]) for s in disk.tree.snapshots]
        for snap, layer in tops:
            path = disk.folder / layer
            out = run(QEMU_IMG or "qemu-img", "info", "--backing-chain", "--output=json", path)
            chain = [Path(c["filename"]).name for c in json.loads(out.stdout)]
            assert chain == disk.tree.chain(layer)[::-1], f"{name} {layer}"
            if layer != "disk.vmdk":  # qemu-img check knows sparse extents, not flat ones
                run(QEMU_IMG or "qemu-img", "check", path)
            run(QEMU_IMG or "qemu-img", "convert", "-O", "raw", path, tmp / "q.raw")
            disk.export_raw(tmp / "e.raw", snapshot=snap, sync=False)
            assert (tmp / "q.raw").read_bytes() == (tmp / "e.raw").read_bytes(), f"{name} {snap}"
            judged += 1
    return judged
