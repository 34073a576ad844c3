"""What does a quiesced RBD group snapshot cost? Blocked window and client stall, 1/3/8 images.

    sudo .venv/bin/python benchmarks/rbd_snapshot.py              # ~1.5 min
    sudo .venv/bin/python benchmarks/rbd_snapshot.py --cycles 10 --json out.json

Starts the tests' throw-away Ceph (tests/helpers/ceph.py: one mon, one mgr, one memstore OSD
on 127.0.0.1), and for each size a group of IMAGES images served as files by one
qemu-storage-daemon (QEMU's rbd driver, the "VM"), ext4 loop-mounted on each, a real agent
configured for those filesystems, and a client load: one thread per filesystem writing 4 KiB
and fdatasync()ing it, RATE times a second (every write reaches librbd). Then:

1. baseline: the load alone;
2. CYCLES quiesced group snapshots (``host.snapshots.cycle.take`` over ``RbdTarget``, as
   ``quiesce-host snapshot create rbd:POOL/GROUP NAME --quiesce`` does);
3. CYCLES group snapshots without quiesce (``RbdStore.snapshot_create``), the floor: no
   freeze, only librbd taking every image's exclusive lock and snapshotting each.

"window" is the host's (freeze sent -> thaw reply; the floor: the create call), "blocked"
the agent's first lock -> last filesystem thawed (what writers wait for; the floor: its
create call), split into "freeze" (first lock -> all held: FIFREEZE of every filesystem),
"cut" (the group snapshot call) and "thaw" (thaw sent -> reply). The client stall is the
latency of the writes whose [sent, ack] overlaps a window, worst and p99, against the
baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host.snapshots.cycle import take  # noqa: E402
from host.snapshots.rbd import RbdStore, RbdTarget  # noqa: E402
from host.snapshots.rbd_cluster import librbd as rbd  # noqa: E402  (None without python3-rbd)
from tests.helpers.agentproc import AgentProcess  # noqa: E402
from tests.helpers.ceph import Cluster, missing  # noqa: E402
from tests.helpers.env import FREEZE_ROOT  # noqa: E402  (confines the agent's FIFREEZE)
from tests.helpers.rbdfs import RbdDisks  # noqa: E402

Span = tuple[float, float]


class SyncLoad:
    """One thread per mount: pwrite 4 KiB + fdatasync, paced; (sent, ack) per write."""

    def __init__(self, mounts: list[Path], rate: float) -> None:
        self.rows: list[tuple[float, float]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(m, 1.0 / rate), daemon=True) for m in mounts
        ]

    def start(self) -> SyncLoad:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _loop(self, mount: Path, interval: float) -> None:
        fd = os.open(mount / "load", os.O_WRONLY | os.O_CREAT, 0o644)
        block, i, next_at = b"x" * 4096, 0, time.monotonic()
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                os.pwrite(fd, block, (i % 1024) * 4096)
                os.fdatasync(fd)
                self.rows.append((sent, time.monotonic()))
                i += 1
                next_at = max(next_at + interval, time.monotonic() - 1.0)
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        except OSError as err:
            self.error = f"{mount}: {err}"
        finally:
            os.close(fd)

    def latencies(self, spans: list[Span]) -> list[float]:
        """ms of the writes whose [sent, ack] overlaps any span."""
        return [(a - s) * 1000 for s, a in self.rows if any(s < e and a > b for b, e in spans)]


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": 0.0, "max": 0.0, "p99": 0.0, "n": 0}
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "max": ordered[-1],
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "n": len(ordered),
    }


def quiesced(spec: str, agent: AgentProcess, cycles: int, interval: float) -> dict[str, Any]:
    rows, spans = [], []
    for i in range(cycles):
        time.sleep(interval)
        out = take(RbdTarget(RbdStore(spec)), f"q{i:02d}", f"unix:{agent.socket}")
        assert out.confirmed and out.consistency == "filesystem", out.warnings
        host = out.host
        split = host["split"]
        rows.append(
            {"window": host["window_ms"], "blocked": host["agent_held_ms"],
             "freeze": split["lock_ms"], "cut": split["switch_ms"], "thaw": split["release_ms"]}
        )  # fmt: skip
        spans.append((out.moments["freeze_sent"], out.moments["thawed"]))
    return {"cycles": rows, "spans": spans}


def floor(spec: str, cycles: int, interval: float) -> dict[str, Any]:
    rows, spans = [], []
    with RbdStore(spec) as store:
        for i in range(cycles):
            time.sleep(interval)
            t0 = time.monotonic()
            store.snapshot_create(f"f{i:02d}")
            t1 = time.monotonic()
            ms = round((t1 - t0) * 1000, 1)
            rows.append({"window": ms, "blocked": ms, "freeze": 0.0, "cut": ms, "thaw": 0.0})
            spans.append((t0, t1))
    return {"cycles": rows, "spans": spans}


def one_size(cluster: Cluster, admin: Any, images: int, args: argparse.Namespace) -> dict[str, Any]:
    ioctx = admin.open_ioctx(cluster.pool)
    group = f"bench{images}"
    names = [f"{group}-disk{i}" for i in range(images)]
    api = rbd.RBD()
    for name in names:
        api.create(ioctx, name, 64 << 20)
    api.group_create(ioctx, group)
    for name in names:
        rbd.Group(ioctx, group).add_image(ioctx, name)
    disks = RbdDisks(cluster, names)
    agent = None
    try:
        disks.start().mkfs().mount()
        workdir = Path(disks.dir) / "agent"
        workdir.mkdir()
        mounts = list(disks.mounts.values())
        agent = AgentProcess(workdir, {"filesystems": {"mounts": [str(m) for m in mounts]}})
        agent.start()
        load = SyncLoad(mounts, args.rate).start()
        time.sleep(0.5)
        t0 = time.monotonic()
        time.sleep(args.baseline)
        base = [(t0, time.monotonic())]
        spec = f"rbd:{cluster.pool}/{group}:conf={cluster.conf}"
        q = quiesced(spec, agent, args.cycles, args.interval)
        f = floor(spec, args.cycles, args.interval)
        time.sleep(0.3)
        load.stop()
        if load.error:
            raise RuntimeError(f"the load failed: {load.error}")
        return {
            "images": images,
            "quiesced": q["cycles"],
            "floor": f["cycles"],
            "stall": {
                "baseline": stats(load.latencies(base)),
                "quiesced": stats(load.latencies(q["spans"])),
                "floor": stats(load.latencies(f["spans"])),
            },
        }
    finally:
        if agent is not None:
            agent.stop()
        disks.remove()
        api.group_remove(ioctx, group)
        for name in names:
            api.remove(ioctx, name)
        ioctx.close()


def med_max(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows if r[key] is not None]
    return f"{statistics.median(values):6.1f} {max(values):6.1f}" if values else "-"


COLUMNS = ("window", "blocked", "freeze", "cut", "thaw")


def table(results: list[dict[str, Any]]) -> str:
    head = f"{'images':>6}  {'snapshot':10} {'n':>2}  " + "  ".join(f"{c:>13}" for c in COLUMNS)
    head += f"  {'write stall worst / p99':>24}"
    lines = [f"{'':22}{'ms, median / max':^75}", head]
    for r in results:
        for kind, label in (("quiesced", "quiesced"), ("floor", "no quiesce")):
            rows, st = r[kind], r["stall"][kind]
            cols = "  ".join(f"{med_max(rows, c):>13}" for c in COLUMNS)
            lines.append(
                f"{r['images']:>6}  {label:10} {len(rows):>2}  {cols}  "
                f"{st['max']:>15.1f} / {st['p99']:6.1f}"
            )
        b = r["stall"]["baseline"]
        pad = " " * (15 * len(COLUMNS) - 2)
        lines.append(f"{r['images']:>6}  {'baseline':10} {'':>2}  {pad}  "
                     f"{b['max']:>15.1f} / {b['p99']:6.1f}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,3,8", help="images per group (default 1,3,8)")
    ap.add_argument("--cycles", type=int, default=5, help="snapshots of each kind per size")
    ap.add_argument("--interval", type=float, default=0.7, help="seconds between snapshots")
    ap.add_argument("--baseline", type=float, default=3.0, help="seconds of load alone")
    ap.add_argument("--rate", type=float, default=50.0, help="synced writes/s per filesystem")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    why = missing()
    if why or os.geteuid() != 0:
        print(f"rbd_snapshot: {why or 'needs root (loop mounts, FIFREEZE)'}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    cluster = Cluster().start()
    print(f"cluster ready in {time.monotonic() - t0:.1f} s ({cluster.dir})", file=sys.stderr)
    admin = cluster.client()
    results = []
    try:
        for images in (int(s) for s in args.sizes.split(",")):
            print(f"{images} image(s): {args.cycles} quiesced + {args.cycles} plain",
                  file=sys.stderr)  # fmt: skip
            results.append(one_size(cluster, admin, images, args))
    finally:
        admin.shutdown()
        cluster.stop()
        shutil.rmtree(FREEZE_ROOT, ignore_errors=True)
    print(
        f"\nRBD group snapshot under load ({args.rate:g} synced 4 KiB writes/s per filesystem; "
        "ext4 on each image through QEMU's rbd driver; memstore OSD; 2 cores)\n"
    )
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
