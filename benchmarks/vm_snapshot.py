"""What does a quiesced snapshot of a running VM cost its clients? The VM lab under the demo's load.

    sudo .venv/bin/python benchmarks/vm_snapshot.py                 # ~4 min under TCG
    sudo .venv/bin/python benchmarks/vm_snapshot.py --cycles 5 --json out.json

Boots the VM lab (host/lab/vmlab.py: the guest image on one engine VM of two disks, served by
one process over NBD, PostgreSQL and MariaDB in the guest with their data on the data disk, the
agent on the virtio-serial port), runs the demo's load from the host (RATE single-row inserts/s
into each database, through QEMU's forwarded ports), measures it alone for BASELINE seconds,
then while CYCLES quiesced snapshots of the VM (both disks at one cut) are taken, one every
INTERVAL seconds, through the chardev (host/lab/vmdemo.py's quiesced_snapshot: the cycle a
user's ``snapshot create --quiesce`` runs, in-process). Then a VM revert: power off, the VM
back to the first snapshot, boot again; the boots' moments are the last table.

Per snapshot, from its record: ``blocked_ms`` (the agent's: first lock that can block a client
to the release of the last one), each writer's share of it, the host's held window (freeze sent
-> thaw reply) and its split (prepare, lock, switch, release), and how long the cut paused the
server's client I/O (QEMU's NBD requests) on both disks and on each. Client latency is per
insert (sent -> acknowledged, on the host's clock); "during" takes those that overlap a held
window, "no snapshot" the baseline. Says whether the guest ran under KVM or TCG. No targets:
under TCG the guest's CPU is emulated and the figures say what that costs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.snapshot_figures import Span, latencies, latency_lines, split_lines  # noqa: E402
from host.lab.image import build_image, default_cache  # noqa: E402
from host.lab.load import InsertLoad, create_tables, start_loads  # noqa: E402
from host.lab.vmdemo import missing_requirements, quiesced_snapshot  # noqa: E402
from host.lab.vmlab import DISKS, BootTimes, VMLab  # noqa: E402


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def snapshots(lab: VMLab, cycles: int, interval: float) -> tuple[list[dict[str, Any]], list[Span]]:
    """CYCLES quiesced snapshots; per snapshot its figures, and the held windows."""
    rows, spans = [], []
    for i in range(cycles):
        time.sleep(interval)
        name = f"bench{i:02d}"
        outcome = quiesced_snapshot(lab, name, "benchmarks/vm_snapshot.py")
        assert outcome.consistency == "application", outcome.warnings
        agent, host = outcome.agent, outcome.host
        assert agent is not None
        shares = {w["name"]: w.get("blocked_share_ms") for w in agent["writers"]}
        rows.append(
            {
                "blocked": agent["timings"]["blocked_ms"],
                "window": host["window_ms"],
                **{k.removesuffix("_ms"): v for k, v in host["split"].items()},
                "paused": host["switch"]["paused_ms"],
                **{f"paused_{d}": v["paused_ms"] for d, v in host["switch"]["disks"].items()},
                "shares": shares,
            }
        )
        m = outcome.moments
        spans.append((m["freeze_sent"], m["thawed"]))
        say(f"  {name}: blocked {rows[-1]['blocked']} ms, held {rows[-1]['window']} ms")
    return rows, spans


def sent_acked(load: InsertLoad) -> list[tuple[float, float]]:
    """(sent, acknowledged) of each of the load's inserts."""
    return [(sent, acked) for _, sent, acked in load.rows]


def run(args: argparse.Namespace) -> dict[str, Any]:
    image = build_image(default_cache(), log=say)
    lab = VMLab(image, say=say)
    loads: list[InsertLoad] = []
    try:
        lab.build()
        say(lab.start().line())
        create_tables(lab)
        loads = start_loads(lab, args.rate)
        time.sleep(2.0)  # warm up
        t0 = time.monotonic()
        time.sleep(args.baseline)
        base = [(t0, time.monotonic())]
        say(f"{args.cycles} quiesced snapshots, one every {args.interval:g} s")
        rows, spans = snapshots(lab, args.cycles, args.interval)
        time.sleep(1.0)
        for load in loads:
            load.stop()
        errors = [f"{ld.name}: {ld.error}" for ld in loads if ld.error]
        if errors:
            raise RuntimeError("the load failed: " + "; ".join(errors))
        accel = lab.boots[0].accel
        say(f"VM revert to bench00: {lab.power_off()}")
        lab.revert("bench00")
        say(lab.start().line())
        lab.power_off()
        return {
            "accel": accel,
            "cycles": rows,
            "latency": {
                ld.name: {
                    "baseline": latencies(sent_acked(ld), base),
                    "during": latencies(sent_acked(ld), spans),
                }
                for ld in loads
            },
            "boots": [{"number": b.number, "accel": b.accel, **b.marks} for b in lab.boots],
            "_boots": lab.boots,
        }
    finally:
        for load in loads:
            load.stop()
        lab.close()


def report(r: dict[str, Any]) -> list[str]:
    lines = split_lines(
        r["cycles"],
        (
            ("blocked", "blocked_ms (agent)"),
            ("window", "held window (freeze sent -> thaw reply)"),
            ("prepare", "  prepare (nothing blocked)"),
            ("lock", "  lock"),
            ("switch", "  switch (flush + new delta)"),
            ("release", "  release (thaw sent -> reply)"),
            ("paused", "client I/O paused by the cut (all disks)"),
            *((f"paused_{d}", f"  on the {d} disk") for d in DISKS),
        ),
        40,
    )
    lines += ["", *latency_lines(r["latency"])]
    boots: list[BootTimes] = r["_boots"]
    lines += ["", "boots (seconds since QEMU started; boot 2 after the VM revert):"]
    lines += ["  " + b.line() for b in boots]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=10, help="snapshots (at most 31)")
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between snapshots")
    ap.add_argument("--baseline", type=float, default=20.0, help="seconds of load alone")
    ap.add_argument("--rate", type=float, default=50.0, help="inserts/s per database")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    if not 1 <= args.cycles <= 31:
        ap.error("--cycles: 1..31 (one chain holds 32 snapshots, the revert adds a layer)")
    missing = missing_requirements()
    if missing:
        print("vm_snapshot: missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    result = run(args)
    load_after = os.getloadavg()
    print(
        f"\nquiesced snapshots of a running VM ({result['accel'].upper()}): PostgreSQL + "
        f"MariaDB in a QEMU guest on an engine VM of two disks served over NBD; "
        f"{args.rate:g} inserts/s into each from the host; {args.cycles} snapshots, one every "
        f"{args.interval:g} s; {os.cpu_count()} host CPUs, load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
    )
    print("\n".join(report(result)))
    if args.json:
        result.pop("_boots")
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
