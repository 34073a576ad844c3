#!/usr/bin/env python3
"""Freeze -> thaw round trip of the daemon over its socket, against plain fsfreeze.

For 1, 4 and 16 loop-mounted ext4 filesystems and 0 and 8 backupScripts.d scripts, it times
N cycles of `freeze` + `thaw` through the daemon and the same work done by hand (fsfreeze -f
on each filesystem, children first, then -u; each script run with freeze then thaw) as the
floor, the two in turn ("added" is the median of the per-pair differences), the agent's own
``blocked_ms`` (first lock to last release, on its clock: here the freeze and thaw back to
back), and the daemon's resident memory idle and after 100 cycles. Needs root; it makes,
freezes and removes only its own loop-mounted images under a temp dir.

    sudo .venv/bin/python benchmarks/freeze_cycle.py [--cycles 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = tempfile.mkdtemp(prefix="quiesce-bench-")
os.environ["QUIESCE_FREEZE_ONLY_UNDER"] = WORK  # this benchmark freezes nothing else

import psutil  # noqa: E402

from tests.helpers.agentproc import AgentProcess  # noqa: E402


def make_fs(n: int) -> list[str]:
    mounts = []
    for i in range(n):
        d = Path(WORK) / f"fs{i}"
        (d / "mnt").mkdir(parents=True)
        img = d / "image"
        with open(img, "wb") as f:
            f.truncate(32 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(d / "mnt")], check=True)
        mounts.append(str(d / "mnt"))
    return mounts


def make_scripts(n: int) -> str:
    d = Path(WORK) / f"scripts{n}"
    d.mkdir(mode=0o755, exist_ok=True)
    for i in range(n):
        p = d / f"{i:02d}-noop"
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    return str(d)


def floor_cycle(mounts: list[str], scripts: list[Path]) -> float:
    t = time.perf_counter()
    for s in scripts:
        subprocess.run([str(s), "freeze"], check=True)
    for m in reversed(mounts):
        subprocess.run(["fsfreeze", "-f", m], check=True)
    for m in mounts:
        subprocess.run(["fsfreeze", "-u", m], check=True)
    for s in reversed(scripts):
        subprocess.run([str(s), "thaw"], check=True)
    return (time.perf_counter() - t) * 1000


def daemon_cycle(agent: AgentProcess) -> tuple[float, float]:
    """The round trip (ms) and the agent's blocked_ms."""
    t = time.perf_counter()
    a = agent.call("freeze", {"label": "bench"})
    b = agent.call("thaw")
    elapsed = (time.perf_counter() - t) * 1000
    assert "return" in a and "return" in b, (a, b)
    return elapsed, float(b["return"]["timings"]["blocked_ms"])


def interleaved(
    agent: AgentProcess, mounts: list[str], scripts: str, cycles: int
) -> tuple[list[float], list[float], list[float]]:
    """Daemon and floor cycles taken in turn, so that both see the same kernel state
    (FIFREEZE's cost swings with RCU grace periods from one moment to the next)."""
    names = sorted(Path(scripts).iterdir())
    d, f, blocked = [], [], []
    for _ in range(cycles):
        trip, b = daemon_cycle(agent)
        d.append(trip)
        blocked.append(b)
        f.append(floor_cycle(mounts, names))
    return d, f, blocked


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--filesystems", default="1,4,16")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("freeze_cycle: needs root (loop devices and FIFREEZE)", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.filesystems.split(",")]
    all_mounts = make_fs(max(counts))
    rows = []
    memory = None
    try:
        for n_fs in counts:
            for n_scripts in (0, 8):
                mounts, scripts = all_mounts[:n_fs], make_scripts(n_scripts)
                wd = Path(tempfile.mkdtemp(prefix="qb", dir="/tmp"))
                agent = AgentProcess(
                    wd,
                    {
                        "filesystems": {"mounts": mounts},
                        "scripts": {"dir": scripts, "legacy_dir": None},
                    },
                ).start()
                try:
                    interleaved(agent, mounts, scripts, 3)  # warm up
                    d, f, blocked = interleaved(agent, mounts, scripts, args.cycles)
                    if n_fs == 1 and n_scripts == 0:
                        idle = rss_mb(agent.pid)
                        for _ in range(100):
                            daemon_cycle(agent)
                        memory = (idle, rss_mb(agent.pid))
                finally:
                    agent.stop()
                dm, fm = statistics.median(d), statistics.median(f)
                added = statistics.median(x - y for x, y in zip(d, f, strict=True))
                p95 = statistics.quantiles(d, n=20)[-1]
                rows.append((n_fs, n_scripts, dm, p95, fm, added, statistics.median(blocked)))
    finally:
        for m in all_mounts:
            subprocess.run(["umount", m], check=False)
        subprocess.run(["rm", "-rf", WORK], check=False)
    print(f"freeze -> thaw round trip, {args.cycles} cycles each (ms)")
    print(
        f"{'filesystems':>11} {'scripts':>7} {'daemon p50':>10} {'daemon p95':>10} "
        f"{'floor p50':>12} {'added p50':>9} {'blocked p50':>11}"
    )
    for r in rows:
        print(
            f"{r[0]:>11} {r[1]:>7} {r[2]:>10.1f} {r[3]:>10.1f} {r[4]:>12.1f} {r[5]:>9.1f} "
            f"{r[6]:>11.1f}"
        )
    if memory:
        print(
            f"daemon resident memory: {memory[0]:.1f} MB idle, {memory[1]:.1f} MB after 100 cycles"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
