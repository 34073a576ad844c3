"""Benchmark of the delta-disk engine against a raw file and against qemu-img, on one machine.

    .venv/bin/python benchmarks/disk_engine.py            # default sizes, about 1-2 minutes
    .venv/bin/python benchmarks/disk_engine.py --write-mib 256 --merge-mib 1024 --mem-gib 64

Measures, on the same files and warm page cache:
- writes: sequential and random 4 KiB / 64 KiB into a fresh delta (every grain allocated on
  first touch, copy-on-write from the base) and again over the now allocated grains, against
  the same writes into a raw file; each run ends with a flush (fsync) and is timed with it;
- flatten of a 1-deep and a 32-deep chain (``export_raw``) vs ``qemu-img convert -O raw``;
- consolidation of a delta holding ``--merge-mib`` into the base (``snapshot_delete``) vs
  ``qemu-img commit`` of an identical copy;
- peak memory (max RSS above the interpreter's) per GiB of virtual disk, with a 32-deep chain;
- the whole commands as a user runs them, start-up included: ``quiesce-host disk export`` of
  the 32-deep chain vs ``qemu-img convert``, and ``quiesce-host snapshot delete`` of a
  snapshot whose delta holds ``--merge-mib`` vs ``qemu-img commit`` (each on a fresh copy).

Prints a Markdown table. Targets (issue 5): writes >= 70 % of the raw file, 32-deep flatten
and consolidation no slower than qemu-img.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host.engine.disk import Disk  # noqa: E402

MiB = 1024 * 1024
GRAIN = 64 * 1024
ROWS: list[tuple[str, str, str, str]] = []
QUIESCE_HOST = Path(sys.executable).parent / "quiesce-host"  # the console script, as installed


def timed(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def raw_pass(fd: int, offs: list[int], data: bytes) -> None:
    for o in offs:
        os.pwrite(fd, data, o)
    os.fsync(fd)


def engine_pass(disk: Disk, offs: list[int], data: bytes) -> None:
    for o in offs:
        disk.write(o, data)
    disk.flush()


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True)


def command(*args: str | Path) -> None:
    """A command as a user runs it; its progress lines and messages are not timed output."""
    subprocess.run(
        [str(a) for a in args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def row(what: str, ours: str, other: str, ratio: str) -> None:
    ROWS.append((what, ours, other, ratio))
    print(f"  {what}: {ours} vs {other} ({ratio})", file=sys.stderr)


def offsets(pattern: str, block: int, total: int, disk: int, seed: int = 7) -> list[int]:
    n = total // block
    if pattern == "seq":
        return [i * block for i in range(n)]
    rng = random.Random(seed)
    return [rng.randrange(disk // block) * block for _ in range(n)]


def one_write_run(work: Path, size: int, offs: list[int], data: bytes) -> list[float]:
    """[raw first pass, raw second pass, delta first pass, delta second pass] in seconds."""
    raw = work / "raw.img"
    fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    os.sync()
    times = [timed(raw_pass, fd, offs, data), timed(raw_pass, fd, offs, data)]
    os.close(fd)
    raw.unlink()
    folder = work / "wdisk"
    with Disk.create(folder, size) as disk:
        disk.snapshot_create("base")
        os.sync()
        times += [timed(engine_pass, disk, offs, data), timed(engine_pass, disk, offs, data)]
    shutil.rmtree(folder)
    return times


def bench_writes(work: Path, disk_mib: int, write_mib: int, repeat: int) -> None:
    size, total = disk_mib * MiB, write_mib * MiB
    for pattern in ("seq", "rand"):
        for block in (4096, GRAIN):
            offs = offsets(pattern, block, total, size)
            data = os.urandom(block)
            runs = [one_write_run(work, size, offs, data) for _ in range(repeat)]
            raw_first, raw_again, ours_first, ours_again = (
                min(r[i] for r in runs) for i in range(4)
            )
            label = f"{pattern} {block // 1024} KiB writes"
            for when, ours, theirs in (
                ("new grains", ours_first, raw_first),
                ("allocated grains", ours_again, raw_again),
            ):
                row(
                    f"{label}, {when} (MiB/s, delta vs raw file)",
                    f"{write_mib / ours:.0f}",
                    f"{write_mib / theirs:.0f}",
                    f"{theirs / ours * 100:.0f} %",
                )


def build_chain(folder: Path, size: int, depth: int, per_layer_mib: int) -> Path:
    rng = random.Random(depth)
    with Disk.create(folder, size) as disk:
        disk.write(0, os.urandom(GRAIN) * (size // GRAIN))
        for i in range(depth):
            disk.snapshot_create(f"s{i}")
            for _ in range(per_layer_mib * MiB // GRAIN):
                disk.write(rng.randrange(size // GRAIN) * GRAIN, os.urandom(GRAIN))
        return disk.current_file()


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def bench_flatten(work: Path, flat_mib: int, qemu: bool, repeat: int) -> None:
    size = flat_mib * MiB
    for depth, per_layer in ((1, flat_mib // 4), (32, max(1, flat_mib // 32))):
        folder = work / f"chain{depth}"
        top = build_chain(folder, size, depth, per_layer)
        ours_out, qemu_out = work / "ours.raw", work / "qemu.raw"
        os.sync()  # let the writeback of building the chain finish before timing anything
        with Disk.open(folder, readonly=True) as disk:
            ours = min(timed(disk.export_raw, ours_out, sync=False) for _ in range(repeat))
            os.sync()
            durable = timed(disk.export_raw, ours_out)
        label = f"flatten {depth}-deep chain, {flat_mib} MiB (s, engine vs qemu-img convert)"
        if qemu:
            theirs = min(
                timed(qemu_img, "convert", "-O", "raw", top, qemu_out) for _ in range(repeat)
            )
            assert digest(ours_out) == digest(qemu_out), "flatten differs from qemu's"
            row(label, f"{ours:.2f}", f"{theirs:.2f}", f"{theirs / ours:.2f}x qemu's speed")
        else:
            row(label, f"{ours:.2f}", "-", "-")
        row(
            "... the same flatten with the export fsync-ed (s; qemu-img convert does not fsync)",
            f"{durable:.2f}",
            "-",
            "-",
        )
        if depth == 32:
            bench_export_command(folder, top, ours_out, qemu_out, flat_mib, qemu, repeat)
        for p in (ours_out, qemu_out):
            p.unlink(missing_ok=True)
        shutil.rmtree(folder)


def bench_export_command(
    folder: Path, top: Path, ours_out: Path, qemu_out: Path, flat_mib: int, qemu: bool, repeat: int
) -> None:
    """``quiesce-host disk export`` of the chain (it fsyncs the image) vs qemu-img convert."""
    os.sync()
    ours = min(
        timed(command, QUIESCE_HOST, "disk", "export", folder, ours_out) for _ in range(repeat)
    )
    label = (
        f"command: quiesce-host disk export, 32-deep chain, {flat_mib} MiB "
        "(s, vs qemu-img convert; only the export fsyncs)"
    )
    if qemu:
        theirs = min(
            timed(command, "qemu-img", "convert", "-O", "raw", top, qemu_out) for _ in range(repeat)
        )
        assert digest(ours_out) == digest(qemu_out), "the exported image differs from qemu's"
        row(label, f"{ours:.2f}", f"{theirs:.2f}", f"{theirs / ours:.2f}x qemu's speed")

        def convert_durably() -> None:  # the same end state: an image that survives a crash
            command("qemu-img", "convert", "-O", "raw", top, qemu_out)
            fd = os.open(qemu_out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        durable = min(timed(convert_durably) for _ in range(repeat))
        row(
            "... against qemu-img convert followed by an fsync of its image (s)",
            f"{ours:.2f}",
            f"{durable:.2f}",
            f"{durable / ours:.2f}x qemu's speed",
        )
    else:
        row(label, f"{ours:.2f}", "-", "-")


def bench_delete_command(work: Path, merge_mib: int, qemu: bool, repeat: int) -> None:
    """``quiesce-host snapshot delete`` of a snapshot whose delta holds ``merge_mib`` vs
    ``qemu-img commit`` of the same delta, each run on a fresh copy of one disk."""
    template = work / "delete-template"
    with Disk.create(template, 2 * merge_mib * MiB) as disk:
        disk.snapshot_create("s")
        chunk = os.urandom(4 * MiB)
        for off in range(0, merge_mib * MiB, 4 * MiB):
            disk.write(off, chunk)

    def best(run: Callable[[Path], None]) -> tuple[float, str]:
        times, flat = [], ""
        for i in range(repeat):
            copy = work / f"delete-{i}"
            shutil.copytree(template, copy)
            os.sync()
            times.append(timed(run, copy))
            flat = digest(copy / "disk-flat.vmdk")
            shutil.rmtree(copy)
        return min(times), flat

    ours, ours_flat = best(lambda d: command(QUIESCE_HOST, "snapshot", "delete", d, "s"))
    label = f"command: quiesce-host snapshot delete, {merge_mib} MiB delta (s, vs qemu-img commit)"
    if qemu:
        theirs, qemu_flat = best(
            lambda d: command("qemu-img", "commit", "-q", d / "disk-000001.vmdk")
        )
        assert ours_flat == qemu_flat, "the merged base differs from qemu's"
        row(label, f"{ours:.2f}", f"{theirs:.2f}", f"{theirs / ours:.2f}x qemu's speed")

        def commit_and_drop(d: Path) -> None:  # the same end state: one file, no delta left
            command("qemu-img", "commit", "-q", d / "disk-000001.vmdk")
            (d / "disk-000001.vmdk").unlink()
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        dropped, _ = best(commit_and_drop)
        row(
            "... against qemu-img commit followed by removing the committed delta (s)",
            f"{ours:.2f}",
            f"{dropped:.2f}",
            f"{dropped / ours:.2f}x qemu's speed",
        )
    else:
        row(label, f"{ours:.2f}", "-", "-")
    shutil.rmtree(template)


def bench_consolidate(work: Path, merge_mib: int, qemu: bool) -> None:
    folder, copy = work / "merge", work / "merge-qemu"
    with Disk.create(folder, 2 * merge_mib * MiB) as disk:
        disk.snapshot_create("s")
        chunk = os.urandom(4 * MiB)
        for off in range(0, merge_mib * MiB, 4 * MiB):
            disk.write(off, chunk)
    shutil.copytree(folder, copy)
    os.sync()
    disk = Disk.open(folder)
    ours = timed(disk.snapshot_delete, "s")
    disk.close()
    label = f"consolidate a {merge_mib} MiB delta into the base (s, engine vs qemu-img commit)"
    if qemu:
        os.sync()
        theirs = timed(qemu_img, "commit", "-q", copy / "disk-000001.vmdk")
        assert digest(folder / "disk-flat.vmdk") == digest(copy / "disk-flat.vmdk")
        row(label, f"{ours:.2f}", f"{theirs:.2f}", f"{theirs / ours:.2f}x qemu's speed")
    else:
        row(label, f"{ours:.2f}", "-", "-")
    shutil.rmtree(folder)
    shutil.rmtree(copy)


MEMORY_PROBE = """
import random, sys
sys.path.insert(0, sys.argv[3])
from host.engine.disk import Disk

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
disk = Disk.open(sys.argv[1])
size = disk.size
rng = random.Random(1)
for _ in range(2000):
    disk.read(rng.randrange(size // 65536) * 65536, 65536)
for _ in range(200):
    disk.write(rng.randrange(size // 65536) * 65536, b"m" * 65536)
disk.flush()
peak = status("VmHWM")
disk.close()
print(peak - base, int(sys.argv[2]))
"""


def bench_memory(work: Path, mem_gib: int) -> None:
    folder = work / "mem"
    size = mem_gib * 1024 * MiB
    with Disk.create(folder, size, preallocate=False) as disk:
        rng = random.Random(3)
        for i in range(32):
            for _ in range(64):
                disk.write(rng.randrange(size // GRAIN) * GRAIN, b"x" * 512)
            if i < 31:
                disk.snapshot_create(f"s{i}")
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(folder), str(mem_gib), str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
    )
    kib, gib = (int(x) for x in out.stdout.split())
    row(
        f"peak memory, {gib} GiB disk, 32-deep chain (MiB per GiB of disk)",
        f"{kib / 1024 / gib:.2f}",
        "-",
        f"{kib / 1024:.0f} MiB in all",
    )
    shutil.rmtree(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="work folder (default: a temp folder under /var/tmp)")
    parser.add_argument("--disk-mib", type=int, default=512, help="disk size for writes")
    parser.add_argument("--write-mib", type=int, default=64, help="bytes written per run")
    parser.add_argument("--flat-mib", type=int, default=256, help="disk size for flatten")
    parser.add_argument("--merge-mib", type=int, default=256, help="delta size to merge")
    parser.add_argument("--mem-gib", type=int, default=16, help="disk size for memory")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the qemu-img baselines")
    args = parser.parse_args()
    qemu = not args.no_qemu and shutil.which("qemu-img") is not None
    if not QUIESCE_HOST.exists():
        parser.error(f"{QUIESCE_HOST} is missing: run scripts/setup (it installs quiesce-host)")
    work = Path(tempfile.mkdtemp(prefix="disk-bench-", dir=args.dir or "/var/tmp"))
    try:
        started = time.perf_counter()
        print("writes...", file=sys.stderr)
        bench_writes(work, args.disk_mib, args.write_mib, args.repeat)
        print("flatten...", file=sys.stderr)
        bench_flatten(work, args.flat_mib, qemu, args.repeat)
        print("consolidate...", file=sys.stderr)
        bench_consolidate(work, args.merge_mib, qemu)
        bench_delete_command(work, args.merge_mib, qemu, args.repeat)
        print("memory...", file=sys.stderr)
        bench_memory(work, args.mem_gib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| measurement | engine | baseline | engine vs baseline |")
    print("|---|---:|---:|---:|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    print(
        f"\n{sys.platform}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
