"""What does a quiesced snapshot cost? Held window and client stall under the demo's load.

    sudo .venv/bin/python benchmarks/quiesced_snapshot.py            # ~1 min
    sudo .venv/bin/python benchmarks/quiesced_snapshot.py --cycles 20 --json out.json

Builds the demo's lab (host/lab.py: an engine disk served through FUSE, ext4 loop-mounted on
it, private PostgreSQL and MariaDB with their data there, the agent configured for both and
for that one filesystem) and runs a paced single-row insert load into each database. Then:

1. baseline: the load alone, no snapshot;
2. CYCLES quiesced snapshots (``host.snapshots.cycle.take`` through the served disk's control
   socket, as ``quiesce-host snapshot create --quiesce`` does), one every INTERVAL seconds;
3. CYCLES crash-consistent snapshots (no agent: flush + switch only), the floor.

The held window is the host's: freeze sent -> thaw reply, split into prepare (the agent's,
nothing locked yet), lock (first lock -> all held), switch (flush + new delta, measured by
the host around the control request) and release (thaw sent -> thaw reply). "locked" is
the agent's first lock -> filesystems thawed. Client latency is per insert (send -> ack); the
worst of the inserts whose span overlaps a window is set against the baseline's worst.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host.lab.load import InsertLoad, create_tables, start_loads  # noqa: E402
from host.lab.local import Lab, missing_requirements  # noqa: E402
from host.snapshots.cycle import take  # noqa: E402
from host.snapshots.target import ServedTarget  # noqa: E402


def overlapping(load: InsertLoad, spans: list[tuple[float, float]]) -> list[float]:
    """Latencies (ms) of the inserts whose [sent, ack] overlaps any span."""
    out = []
    for _, s, a in load.rows:
        if any(s < end and a > start for start, end in spans):
            out.append((a - s) * 1000)
    return out


def quiesced(
    lab: Lab, cycles: int, interval: float
) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    rows, spans = [], []
    for i in range(cycles):
        time.sleep(interval)
        out = take(ServedTarget(lab.disk), f"q{i:02d}", f"unix:{lab.agent_socket}")
        assert out.confirmed and out.consistency == "application", out.warnings
        host = out.host
        rows.append({"window": host["window_ms"], **host["split"], "locked": host["agent_held_ms"]})
        spans.append((out.moments["freeze_sent"], out.moments["thawed"]))
    return rows, spans


def crash(
    lab: Lab, cycles: int, interval: float
) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    rows, spans = [], []
    target = ServedTarget(lab.disk)
    for i in range(cycles):
        time.sleep(interval)
        t0 = time.monotonic()
        target.create(f"c{i:02d}", "", "crash", {}, {}, timeout=30)
        t1 = time.monotonic()
        ms = round((t1 - t0) * 1000, 1)
        rows.append(
            {
                "window": ms,
                "prepare_ms": 0.0,
                "lock_ms": 0.0,
                "switch_ms": ms,
                "release_ms": 0.0,
                "locked": 0.0,
            }
        )
        spans.append((t0, t1))
    return rows, spans


def med_max(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):7.1f} {max(values):7.1f}"


def table(results: dict[str, Any]) -> str:
    keys = ("window", "prepare_ms", "lock_ms", "switch_ms", "release_ms", "locked")
    names = ("held window", "prepare", "lock", "switch", "release", "locked")
    lines = [f"{'ms, median / max':18} {'n':>3}  " + "  ".join(f"{n:>15}" for n in names)]
    for kind in ("quiesced", "crash-consistent"):
        r = results[kind]
        cols = [med_max([c[k] for c in r["cycles"]]) for k in keys]
        lines.append(f"{kind:18} {len(r['cycles']):>3}  " + "  ".join(f"{c:>15}" for c in cols))
    lines += [
        "",
        f"{'client latency, ms':18} {'PostgreSQL worst':>17} {'p99':>7} "
        f"{'MariaDB worst':>14} {'p99':>7}",
    ]
    for kind, label in (
        ("baseline", "no snapshot"),
        ("quiesced", "quiesced"),
        ("crash-consistent", "crash-consistent"),
    ):
        lat = results[kind]["latency"]
        pg, my = lat["PostgreSQL"], lat["MariaDB"]
        lines.append(
            f"{label:18} {pg['worst']:17.1f} {pg['p99']:7.1f} {my['worst']:14.1f} {my['p99']:7.1f}"
        )
    return "\n".join(lines)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"worst": 0.0, "p99": 0.0, "n": 0}
    ordered = sorted(values)
    return {
        "worst": ordered[-1],
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "n": len(ordered),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.5, help="seconds between snapshots")
    ap.add_argument("--baseline", type=float, default=10.0, help="seconds of load alone")
    ap.add_argument("--rate", type=float, default=200.0, help="inserts/s into each database")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    if 2 * args.cycles > 32:
        ap.error("at most 16 cycles: one chain holds 32 snapshots")
    missing = missing_requirements()
    if missing:
        print("quiesced_snapshot: missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    lab = Lab(say=lambda s: print(s, file=sys.stderr))
    try:
        print(f"building the lab in {lab.root}", file=sys.stderr)
        lab.build()
        create_tables(lab)
        loads = start_loads(lab, args.rate)
        time.sleep(1.0)  # warm up
        t0 = time.monotonic()
        time.sleep(args.baseline)
        base_span = [(t0, time.monotonic())]
        print(f"{args.cycles} quiesced snapshots", file=sys.stderr)
        q_rows, q_spans = quiesced(lab, args.cycles, args.interval)
        print(f"{args.cycles} crash-consistent snapshots", file=sys.stderr)
        c_rows, c_spans = crash(lab, args.cycles, args.interval)
        time.sleep(0.5)
        for ld in loads:
            ld.stop()
            if ld.error:
                raise RuntimeError(f"{ld.name} load failed: {ld.error}")

        def latency(spans: list[tuple[float, float]]) -> dict[str, dict[str, float]]:
            return {ld.name: summary(overlapping(ld, spans)) for ld in loads}

        results = {
            "baseline": {"latency": latency(base_span)},
            "quiesced": {"cycles": q_rows, "latency": latency(q_spans)},
            "crash-consistent": {"cycles": c_rows, "latency": latency(c_spans)},
            "rate": args.rate,
            "kernel": os.uname().release,
        }
    finally:
        lab.close()
    print(
        f"\nquiesced snapshot under load ({args.rate:g} inserts/s into each of PostgreSQL "
        "and MariaDB; one ext4 filesystem; disk served through FUSE)\n"
    )
    print(table(results))
    worst_window = max(c["window"] for c in results["quiesced"]["cycles"])
    print(
        f"\ntarget: held window under 1 s: worst {worst_window:.1f} ms -> "
        + ("met" if worst_window < 1000 else "NOT met")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
