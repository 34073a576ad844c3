#!/usr/bin/env python3
"""The pause a VM snapshot imposes on client I/O, for 1, 4 and 16 disks, under a write load.

Each row serves a VM of N disks (``quiesce-host serve VM --nbd``, a process of its own, as a
user runs it), one NBD client per disk writing 4 KiB at random offsets, paced at ``--rate``
writes a second each, and takes ``--cuts`` snapshots through the control socket. Reported:
the server's own ``paused_ms`` (new I/O held on every disk until every disk is switched:
what every client waits at most), its ``switch_ms`` (the engine's switch of all disks), and
the worst write latency a client saw while a cut ran. The first row is today's single disk
(``serve DISK``), the switch the VM cut is measured against (about 10 ms). Targets
(issue 12): 4 disks under 30 ms, 16 disks under 100 ms.

    .venv/bin/python benchmarks/vm_cut.py [--cuts 10] [--rate 100] [--disks 1,4,16]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.tables import table  # noqa: E402
from host.engine.disk import Disk  # noqa: E402
from host.engine.vm import VM  # noqa: E402
from host.serve import nbd_wire  # noqa: E402
from host.serve.control_client import request  # noqa: E402
from tests.helpers.nbdclient import Client  # noqa: E402
from tests.helpers.served import Served  # noqa: E402

MiB = 1 << 20
SIZE = 16 * MiB
BLOCK = 4096


class Writer(threading.Thread):
    """One client on one export: paced random 4 KiB writes, each with its send and ack times."""

    def __init__(self, port: int, export: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.client = Client(port, timeout=60)
        self.client.greeting()
        replies = self.client.go(export.encode())
        assert replies[-1][0] == nbd_wire.REP_ACK, f"export {export!r} refused: {replies}"
        self.interval = 1.0 / rate
        self.stop = threading.Event()
        self.times: list[tuple[float, float]] = []
        self.rng = random.Random(export)

    def run(self) -> None:
        data = bytes(BLOCK)
        next_at = time.monotonic()
        while not self.stop.is_set():
            offset = self.rng.randrange(SIZE // BLOCK) * BLOCK
            sent = time.monotonic()
            assert self.client.write(offset, data) == 0
            self.times.append((sent, time.monotonic()))
            next_at = max(next_at + self.interval, time.monotonic() - 1.0)
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        self.client.disconnect()

    def worst_during(self, start: float, end: float) -> float:
        """The longest write (ms) that was in flight at some moment of [start, end]."""
        return max(((a - s) * 1000 for s, a in self.times if s <= end and a >= start), default=0)


def measure(folder: Path, exports: list[str], cuts: int, rate: float) -> dict[str, Any]:
    served = Served(str(folder), "--nbd", "127.0.0.1:0")
    try:
        lines = served.wait_all(" over NBD at ", len(exports))
        port = int(lines[0].rsplit(" ", 1)[1].split(":")[2].split("/")[0])
        writers = [Writer(port, name, rate) for name in exports]
        for w in writers:
            w.start()
        time.sleep(1.0)  # the load settles
        paused, switched, worst = [], [], []
        for i in range(cuts):
            t0 = time.monotonic()
            reply = request(folder, "snapshot-create", {"name": f"cut{i}"}, timeout=60)
            t1 = time.monotonic()
            paused.append(reply["paused_ms"])
            switched.append(reply["switch_ms"])
            worst.append(max(w.worst_during(t0, t1) for w in writers))
            time.sleep(0.3)
        time.sleep(0.2)
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(30)
        writes = sum(len(w.times) for w in writers)
    finally:
        served.stop(signal.SIGTERM)
        served.errfile.close()
    return {"paused": paused, "switched": switched, "worst": worst, "writes": writes}


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=int, default=10, help="snapshots per row (default 10)")
    ap.add_argument("--rate", type=float, default=100, help="writes/s per disk (default 100)")
    ap.add_argument("--disks", default="1,4,16", help="VM sizes to measure (default 1,4,16)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qa-vmcut-", dir="/tmp"))
    rows = []
    try:
        Disk.create(work / "disk", SIZE, preallocate=False).close()
        rows.append(("disk (today's switch)", measure(work / "disk", [""], args.cuts, args.rate)))
        for n in (int(x) for x in args.disks.split(",")):
            names = [f"d{i:02d}" for i in range(n)]
            folder = work / f"vm{n}"
            VM.create(folder, [(name, SIZE) for name in names], preallocate=False).close()
            rows.append(
                (
                    f"VM, {n} disk{'s' if n > 1 else ''}",
                    measure(folder, names, args.cuts, args.rate),
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{args.cuts} cuts per row, one NBD client per disk writing 4 KiB at "
        f"{args.rate:g}/s, through 'quiesce-host serve'\n"
    )
    head = ("", "paused_ms med", "p95", "max", "switch_ms med", "client worst ms", "writes")
    body = [
        (
            label,
            f"{statistics.median(r['paused']):.1f}",
            f"{p95(r['paused']):.1f}",
            f"{max(r['paused']):.1f}",
            f"{statistics.median(r['switched']):.1f}",
            f"{max(r['worst']):.1f}",
            str(r["writes"]),
        )
        for label, r in rows
    ]
    for line in table(head, body):
        print(line)


if __name__ == "__main__":
    main()
