"""The figures both quiesced-snapshot benchmarks print (quiesced_snapshot.py on this machine,
vm_snapshot.py in a QEMU guest): client latency inside held windows, and the tables of a
snapshot's split and its clients' latency, so the two read alike and are read alike."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

Span = tuple[float, float]  # (start, end), monotonic seconds on the host


def latencies(txs: Iterable[tuple[float, float]], spans: list[Span]) -> dict[str, float]:
    """Worst and p99 (ms) of the transactions (sent, acknowledged) that overlap any span."""
    lat = sorted((a - s) * 1000 for s, a in txs if any(s < e and a > b for b, e in spans))
    if not lat:
        return {"worst": 0.0, "p99": 0.0, "n": 0}
    return {"worst": lat[-1], "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "n": len(lat)}


def p50_max(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} {max(values):8.1f}"


def split_lines(
    rows: list[dict[str, Any]], labels: Sequence[tuple[str, str]], width: int
) -> list[str]:
    """p50 and max of each labelled figure of the snapshots, then each writer's share of
    ``blocked_ms``; a figure no snapshot has is left out."""
    lines = [f"{'ms':{width}} {'p50':>8} {'max':>8}"]
    for key, label in labels:
        values = [c[key] for c in rows if c.get(key) is not None]
        if values:
            lines.append(f"{label:{width}} {p50_max(values)}")
    names = sorted({n for c in rows for n, v in c["shares"].items() if v is not None})
    for name in names:
        values = [c["shares"][name] for c in rows if c["shares"].get(name) is not None]
        lines.append(f"{'  share of blocked: ' + name:{width}} {p50_max(values)}")
    return lines


def latency_lines(
    latency: dict[str, dict[str, Any]], rates: dict[str, int] | None = None
) -> list[str]:
    """Worst and p99 client latency without and during snapshots, per database (and its
    achieved rate, when given)."""
    rate_head = "  rate/s" if rates is not None else ""
    lines = [f"{'client latency, ms':22} {'no snapshot':>17} {'during snapshots':>17}"]
    lines.append(f"{'':22} {'worst':>8} {'p99':>8} {'worst':>8} {'p99':>8}   n during{rate_head}")
    for name, lat in latency.items():
        b, d = lat["baseline"], lat["during"]
        rate = f"  {rates.get(name, 0):6}" if rates is not None else ""
        lines.append(
            f"{name:22} {b['worst']:8.1f} {b['p99']:8.1f} {d['worst']:8.1f} {d['p99']:8.1f}"
            f"   {d['n']:8}{rate}"
        )
    return lines
