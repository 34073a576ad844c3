"""Model-based: random writes (the engine, qemu-io on the delta file, qemu-io as an NBD client of
the live server), snapshots, reverts, deletes, reopens, held after every step against a plain
byte array; qemu-img check/compare judge the files."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from host.engine.disk import Disk
from host.serve.device import GatedDevice, IOGate
from host.serve.nbd import NBDServer
from tests.helpers.disks import (
    GRAIN,
    QEMU_IMG,
    QEMU_IO,
    MiB,
    need_qemu,
    qemu_io,
    qemu_judge,
    run,
)

SIZE = 34 * MiB  # two grain tables
HOT = [0, 5 * GRAIN, 31 * MiB + 7, 32 * MiB - 100, SIZE - 3 * GRAIN]  # GT boundaries


class Model:
    def __init__(self) -> None:
        self.current = bytearray(SIZE)
        self.snapshots: dict[str, bytes] = {}


def random_write(rng: random.Random) -> tuple[int, bytes]:
    kind = rng.random()
    if kind < 0.3:
        length = rng.choice([1, 511, 4096, GRAIN, GRAIN + 1, 3 * GRAIN])
    else:
        length = rng.randint(1, 200_000)
    off = min(max(0, rng.choice(HOT) + rng.randint(-GRAIN, 2 * GRAIN)), SIZE - length)
    return off, rng.randbytes(length) if rng.random() < 0.5 else bytes(
        [rng.randrange(256)]
    ) * length


def check_all(disk: Disk, model: Model) -> None:
    assert disk.read(0, SIZE) == model.current
    assert sorted(s["name"] for s in disk.snapshot_list()) == sorted(model.snapshots)


def check_snapshots(disk: Disk, model: Model, tmp: Path) -> None:
    out = tmp / "snap.raw"
    for name, data in model.snapshots.items():
        disk.export_raw(out, snapshot=name)
        assert out.read_bytes() == data, name
    out.unlink(missing_ok=True)


def nbd_writes(rng: random.Random, disk: Disk, model: Model, n: int) -> None:
    """qemu-io as an NBD client of the live disk, through the server's gate as ``quiesce-host
    serve`` has it: a pattern write, a zero write, a discard (advisory in our server: the data
    stays what it was, which NBD allows)."""
    server = NBDServer(GatedDevice(disk, IOGate()), "127.0.0.1", 0)
    server.start()
    try:
        cmds, spans = [], []
        for kind in ("write -P {p}", "write -z", "discard"):
            off = rng.randrange(0, SIZE - 200_000)
            length = rng.randint(1, 200_000)
            cmds += ["-c", f"{kind.format(p=(n * 7) % 256)} {off} {length}"]
            if kind != "discard":
                spans.append((off, length, (n * 7) % 256 if kind.startswith("write -P") else 0))
        out = run(QEMU_IO or "qemu-io", "-f", "raw", *cmds, f"nbd://127.0.0.1:{server.port}/")
        assert "error" not in out.stdout.lower() and "failed" not in out.stdout.lower(), out.stdout
    finally:
        server.shutdown()
    for off, length, byte in spans:
        model.current[off : off + length] = bytes([byte]) * length


def step(rng: random.Random, disk: Disk, model: Model, n: int, tmp: Path, use_qemu: bool) -> Disk:
    op = rng.random()
    names = list(model.snapshots)
    if op < 0.45:
        off, data = random_write(rng)
        disk.write(off, data)
        model.current[off : off + len(data)] = data
    elif op < 0.5:
        off, data = random_write(rng)
        disk.write_zeroes(off, len(data))
        model.current[off : off + len(data)] = bytes(len(data))
    elif op < 0.55 and use_qemu:
        nbd_writes(rng, disk, model, n)
    elif op < 0.6 and use_qemu:
        folder, current = disk.folder, disk.current_file()
        disk.close()
        off = rng.randrange(0, SIZE - 200_000)
        length = rng.randint(1, 200_000)
        qemu_io(current, f"write -P {n % 256} {off} {length}")
        model.current[off : off + length] = bytes([n % 256]) * length
        disk = Disk.open(folder)
    elif op < 0.72:
        if disk.tree.depth() < 32:
            disk.snapshot_create(f"s{n}", description=f"step {n}")
            model.snapshots[f"s{n}"] = bytes(model.current)
    elif op < 0.8 and names:
        name = rng.choice(names)
        disk.snapshot_revert(name)
        model.current = bytearray(model.snapshots[name])
    elif op < 0.9 and names:
        name = rng.choice(names)
        disk.snapshot_delete(name)
        del model.snapshots[name]
    elif op < 0.93:
        disk.snapshot_delete_all()
        model.snapshots.clear()
    else:
        folder = disk.folder
        disk.close()
        disk = Disk.open(folder)
    return disk


def run_model(seed: int, steps: int, folder: Path, tmp: Path, use_qemu: bool) -> None:
    rng = random.Random(seed)
    model = Model()
    disk = Disk.create(folder, SIZE)
    try:
        for n in range(steps):
            disk = step(rng, disk, model, n, tmp, use_qemu)
            check_all(disk, model)
            assert disk.check() == [], f"step {n}"
            if use_qemu and n % 8 == 7:
                disk.flush()
                qemu_judge(disk.current_file(), model.current, tmp)
        check_snapshots(disk, model, tmp)
    finally:
        disk.close()
    left = {p.name for p in folder.iterdir()} - {
        ".lock",
        "tree.json",
        "disk.vmdk",
        "disk-flat.vmdk",
    }
    assert left == set(disk.tree.layers) - {"disk.vmdk"}  # no stray files
    if use_qemu:
        run(QEMU_IMG or "qemu-img", "info", "--backing-chain", folder / disk.tree.current)


@pytest.mark.parametrize("seed", range(6))
def test_random_sequences_match_a_byte_array(seed: int, tmp_path: Path) -> None:
    run_model(seed, 60, tmp_path / "disk", tmp_path, use_qemu=False)


@pytest.mark.qemu
@pytest.mark.parametrize("seed", [100, 101, 102])
def test_random_sequences_with_qemu_io_writes_and_qemu_as_judge(seed: int, tmp_path: Path) -> None:
    need_qemu()
    run_model(
        seed,
        int(os.environ.get("QUIESCE_MODEL_STEPS", "50")),
        tmp_path / "disk",
        tmp_path,
        use_qemu=True,
    )
