"""VM test helpers: qemu-img as the judge of every disk of every snapshot of a VM, and the
three disk names the VM tests use (``tests.helpers.striped``)."""

from __future__ import annotations

import json
from pathlib import Path

from host.engine.vm import VM
from tests.helpers.disks import QEMU_IMG, run
from tests.helpers.striped import DISKS

__all__ = ["DISKS", "qemu_judges_every_disk"]


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
