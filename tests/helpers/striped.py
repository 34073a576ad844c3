"""A VM of three disks seen as one striped disk, so that the single-disk crash plans and
models run over a VM unchanged (``tests.helpers.crashplan`` runs it in a child process: this
module imports only the engine, nothing that sets up the test environment)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from host.engine.disk import Disk
from host.engine.vm import VM
from tests.helpers.crashplan import abandon

DISKS = ("root", "wal", "data")
GRAIN = 64 * 1024


class Striped:
    """A VM of ``len(DISKS)`` disks read and written as one disk: grain ``g`` is grain
    ``g // n`` of disk ``g % n``. A write that spans grains lands on several disks, so a
    model of one flat disk checks that every disk of the VM is cut, reverted and merged as
    one. It has the part of ``Disk``'s interface the crash plans use."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self.parts = [vm.disks[n] for n in vm.tree.disk_names()]
        self.size = sum(d.size for d in self.parts)

    @classmethod
    def create(cls, folder: Path, size: int) -> Striped:
        n = len(DISKS)
        assert size % (n * GRAIN) == 0
        return cls(VM.create(folder, [(name, size // n) for name in DISKS]))

    @classmethod
    def open(cls, folder: Path) -> Striped:
        return cls(VM.open(folder))

    def __enter__(self) -> Striped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.vm.close()

    def _pieces(self, offset: int, length: int) -> list[tuple[Disk, int, int, int]]:
        """``(disk, offset on it, length, offset in the request)`` per grain touched."""
        out = []
        pos = offset
        while pos < offset + length:
            g, within = divmod(pos, GRAIN)
            n = min(GRAIN - within, offset + length - pos)
            disk = self.parts[g % len(self.parts)]
            out.append((disk, (g // len(self.parts)) * GRAIN + within, n, pos - offset))
            pos += n
        return out

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(d.read(o, n) for d, o, n, _ in self._pieces(offset, length))

    def write(self, offset: int, data: bytes) -> None:
        for d, o, n, at in self._pieces(offset, len(data)):
            d.write(o, data[at : at + n])

    def write_zeroes(self, offset: int, length: int) -> None:
        for d, o, n, _ in self._pieces(offset, length):
            d.write_zeroes(o, n)

    def snapshot_create(self, name: str) -> None:
        self.vm.snapshot_create(name)

    def snapshot_revert(self, name: str) -> None:
        self.vm.snapshot_revert(name)

    def snapshot_delete(self, name: str) -> None:
        self.vm.snapshot_delete(name)

    def snapshot_delete_all(self) -> None:
        self.vm.snapshot_delete_all()

    def snapshot_list(self) -> list[dict[str, Any]]:
        return self.vm.snapshot_list()

    def check(self) -> list[str]:
        return self.vm.check()

    def export_raw(self, out: Path, snapshot: str | None = None) -> None:
        """The striped image of ``snapshot`` (or the current state) into ``out``."""
        images = []
        for i, disk in enumerate(self.parts):
            part = out.with_name(f"{out.name}.{i}")
            disk.export_raw(part, snapshot=snapshot, sync=False)
            images.append(part.read_bytes())
            part.unlink()
        n, whole = len(images), bytearray(self.size)
        for g in range(self.size // GRAIN):
            src = images[g % n][(g // n) * GRAIN : (g // n + 1) * GRAIN]
            whole[g * GRAIN : (g + 1) * GRAIN] = src
        out.write_bytes(bytes(whole))


def abandon_vm(vm: VM) -> None:
    """What the kernel does for a dead process: close every disk's files, drop the locks."""
    for disk in vm.disks.values():
        abandon(disk)
    if vm._flock is not None:
        vm._flock.release()
        vm._flock = None


def abandon_any(target: Disk | Striped) -> None:
    if isinstance(target, Striped):
        abandon_vm(target.vm)
    else:
        abandon(target)


Kind = tuple[Callable[[Path, int], Any], Callable[[Path], Any]]
KINDS: dict[str, Kind] = {
    "disk": (Disk.create, Disk.open),
    "vm": (Striped.create, Striped.open),
}
