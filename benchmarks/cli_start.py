#!/usr/bin/env python3
"""Wall time of one `quiesce-agent ping` as a bridge script runs it: a new process each time.

A real daemon (no writers, its socket in a temp dir) answers; each row starts the command
N times, the rows taken in turn, and gives the median and p95 wall time. The floor is the
same interpreter doing nothing (`python -c pass`, which also pays the virtual environment's
site hooks); "added" is the row's median minus the floor's. For comparison, the last row
imports what every client verb imported before the split (the daemon, psycopg, pymysql).
Goal (issue 11): `quiesce-agent ping` under 80 ms wall on this machine.

    .venv/bin/python benchmarks/cli_start.py [--runs 30]
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

from tests.helpers.agentproc import AgentProcess  # noqa: E402


def console_script(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60, cwd="/")
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="starts per row (default 30)")
    runs = ap.parse_args().runs
    work = Path(tempfile.mkdtemp(prefix="qa-clibench-", dir="/tmp"))
    agent = AgentProcess(work, {}).start()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    py = sys.executable
    rows = {
        "python -c pass (the floor)": [py, "-c", "pass"],
        "quiesce-agent ping": [console_script("quiesce-agent"), "ping", "--socket", agent.socket],
        "quiesce-agent --config F status": [
            console_script("quiesce-agent"),
            "--config",
            str(agent.config_path),
            "status",
        ],
        "before: import the daemon, psycopg, pymysql": [
            py,
            "-c",
            "import agent.daemon, agent.writers, psycopg, pymysql",
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    try:
        for cmd in rows.values():  # warm the page cache and the bytecode once
            timed(cmd, dict(env, PYTHONDONTWRITEBYTECODE=""))
        for _ in range(runs):
            for name, cmd in rows.items():
                times[name].append(timed(cmd, env))
    finally:
        agent.stop()
    floor = statistics.median(times["python -c pass (the floor)"])
    version = sys.version.split()[0]
    print(f"{runs} starts per row, rows in turn; {os.cpu_count()} CPUs; python {version}")
    print("| command | p50 ms | p95 ms | added p50 ms |\n|---|---:|---:|---:|")
    for name, values in times.items():
        values.sort()
        p50 = statistics.median(values)
        p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
        print(f"| {name} | {p50:.1f} | {p95:.1f} | {p50 - floor:.1f} |")


if __name__ == "__main__":
    main()
