"""How long do the database writers stall clients? Freeze -> hold -> thaw under a steady load.

The cycle is the agent's (DESIGN.md, "The freeze cycle"): prepare (PostgreSQL's CHECKPOINT and
pg_backup_start, MariaDB's BACKUP STAGE START and FLUSH) -> freeze (only what blocks: BLOCK_DDL
and BLOCK_COMMIT, FTWRL) -> hold -> thaw (the release) -> finish (pg_backup_stop). "blocked"
is the freeze call to the thaw's return; prepare and finish are shown apart, they hold
nothing a client waits for.

    .venv/bin/python benchmarks/db_stall.py              # 10 cycles per strategy, ~2 min
    .venv/bin/python benchmarks/db_stall.py --cycles 20  # the full run of the issue

Starts a private PostgreSQL (WAL archiving on) and a private MariaDB (binary log on) from
tests/dbservers.py, then for each strategy (postgres backup mode; mysql ftwrl; mysql
backup_stage) runs a steady load without freezes (the baseline), and the same load while the
writer runs CYCLES x (prepare, freeze, hold, thaw). The writer is driven directly through
the Writer interface, as the agent's state machine drives it; filesystems are not frozen, so
what is measured is the database lock alone.

Load: pgbench (TPC-B-like, rate-limited) on PostgreSQL; on MariaDB a separate process whose
writer threads run BEGIN; INSERT; INSERT; COMMIT and whose reader thread runs point SELECTs,
each at a fixed rate, while a batch thread runs a ~0.2 s UPDATE every 0.3 s (a statement
FLUSH TABLES WITH READ LOCK has to wait for, below any long-query threshold). Client
latencies are of the transactions that overlap a blocked window, and of the whole baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.deadline import Deadline  # noqa: E402
from hooks.base import Operation  # noqa: E402
from hooks.mysql.settings import MysqlSettings  # noqa: E402
from hooks.mysql.writer import MysqlWriter  # noqa: E402
from hooks.postgres.settings import PostgresSettings  # noqa: E402
from hooks.postgres.writer import PostgresWriter  # noqa: E402
from tests.helpers.dbservers import MariaServer, PgServer, remove_templates  # noqa: E402

Span = tuple[float, float]  # (wall-clock start, latency seconds)


@dataclass
class Result:
    name: str
    windows: list[float] = field(default_factory=list)  # blocked: freeze call -> thaw returned
    freeze_calls: list[float] = field(default_factory=list)
    prepares: list[float] = field(default_factory=list)
    finishes: list[float] = field(default_factory=list)
    base: dict[str, list[float]] = field(default_factory=dict)  # load kind -> latencies
    during: dict[str, list[float]] = field(default_factory=dict)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def overlapping(spans: list[Span], windows: list[Span]) -> list[float]:
    """Latencies of the transactions that overlap any window (all times wall clock)."""
    out = []
    for start, lat in spans:
        end = start + lat
        if any(start < w1 and end > w0 for w0, w1 in windows):
            out.append(lat)
    return out


def cycles(writer: object, n: int, hold: float, gap: float, result: Result) -> list[Span]:
    """Run n prepare/freeze/hold/thaw/finish cycles; return the blocked windows (wall clock)."""
    walls = []
    for i in range(n):
        op = Operation(f"bench-{i}", Deadline(30))
        p0 = time.monotonic()
        writer.prepare(op)  # type: ignore[attr-defined]
        w0, t0 = time.time(), time.monotonic()
        result.prepares.append(t0 - p0)
        writer.freeze(op)  # type: ignore[attr-defined]
        result.freeze_calls.append(time.monotonic() - t0)
        time.sleep(hold)
        writer.thaw(op)  # type: ignore[attr-defined]
        released = time.monotonic()
        writer.finish(op)  # type: ignore[attr-defined]
        result.finishes.append(time.monotonic() - released)
        result.windows.append(released - t0)
        walls.append((w0, w0 + released - t0))
        time.sleep(gap)
    return walls


# -- PostgreSQL: pgbench ------------------------------------------------------------------------


def pgbench(
    server: PgServer, seconds: float, rate: int, clients: int, logdir: Path, tag: str
) -> subprocess.Popen[bytes]:
    prefix = logdir / tag
    return subprocess.Popen(
        [
            str(server.bindir / "pgbench"),
            "-h",
            str(server.sockdir),
            "-U",
            "postgres",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(int(seconds + 0.999)),
            "-R",
            str(rate),
            "-l",
            f"--log-prefix={prefix}",
            "-n",
            "postgres",
        ],
        cwd=str(logdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pgbench_spans(logdir: Path, tag: str) -> list[Span]:
    spans = []
    for path in logdir.glob(f"{tag}.*"):
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) >= 6 and f[2].isdigit():
                lat = int(f[2]) / 1e6
                end = int(f[4]) + int(f[5]) / 1e6
                spans.append((end - lat, lat))
    return spans


def bench_postgres(args: argparse.Namespace) -> Result:
    server = PgServer(archive=True).start()
    logdir = Path(tempfile.mkdtemp(prefix="qa-bench-"))
    os.chmod(logdir, 0o777)
    result = Result("postgres (backup mode)")
    try:
        subprocess.run(
            [
                str(server.bindir / "pgbench"),
                "-h",
                str(server.sockdir),
                "-U",
                "postgres",
                "-i",
                "-q",
                "-s",
                "2",
                "postgres",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        proc = pgbench(server, args.baseline, args.pg_rate, args.clients, logdir, "base")
        proc.wait()
        result.base["pgbench tx"] = [lat for _, lat in pgbench_spans(logdir, "base")]
        span = args.cycles * (args.hold + args.gap + 0.3) + 2
        proc = pgbench(server, span, args.pg_rate, args.clients, logdir, "cyc")
        time.sleep(1.0)
        writer = PostgresWriter(PostgresSettings(name="bench", dsn=server.dsn))
        windows = cycles(writer, args.cycles, args.hold, args.gap, result)
        proc.wait()
        result.during["pgbench tx"] = overlapping(pgbench_spans(logdir, "cyc"), windows)
    finally:
        server.remove()
        subprocess.run(["rm", "-rf", str(logdir)], check=False)
    return result


# -- MariaDB: insert transactions and point reads in a separate process ----------------------

LOAD = """
import json, sys, threading, time
import pymysql
sock, seconds, rate, writers = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {"write tx": [], "read": [], "batch": []}
end = time.monotonic() + seconds
def run(kind, n):
    c = pymysql.connect(unix_socket=sock, user="root", autocommit=True)
    cur = c.cursor()
    step, nxt, i = 1.0 / rate, time.monotonic(), 0
    while time.monotonic() < end:
        w0, t0 = time.time(), time.monotonic()
        if kind == "batch":
            cur.execute("UPDATE bench.b SET v = v + 1 + SLEEP(0.001)")
            out[kind].append((w0, time.monotonic() - t0))
            time.sleep(0.3)
            continue
        if kind == "write tx":
            cur.execute("BEGIN")
            cur.execute("INSERT INTO bench.t (w, v) VALUES (%s, %s)", (n, i))
            cur.execute("INSERT INTO bench.t (w, v) VALUES (%s, %s)", (n, -i))
            cur.execute("COMMIT")
        else:
            cur.execute("SELECT v FROM bench.t WHERE id = %s", (i % 1000 + 1,))
            cur.fetchall()
        out[kind].append((w0, time.monotonic() - t0))
        i += 1
        nxt += step
        time.sleep(max(0.0, nxt - time.monotonic()))
threads = [threading.Thread(target=run, args=("write tx", n)) for n in range(writers)]
threads.append(threading.Thread(target=run, args=("read", 0)))
threads.append(threading.Thread(target=run, args=("batch", 0)))
for t in threads: t.start()
for t in threads: t.join()
json.dump(out, sys.stdout)
"""


def maria_load(
    server: MariaServer, seconds: float, args: argparse.Namespace, box: dict[str, list[Span]]
) -> threading.Thread:
    def run() -> None:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                LOAD,
                server.socket,
                str(seconds),
                str(args.my_rate),
                str(args.clients),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
        box.update({k: [tuple(x) for x in v] for k, v in json.loads(proc.stdout).items()})

    t = threading.Thread(target=run)
    t.start()
    return t


def bench_mysql(args: argparse.Namespace, lock: str) -> Result:
    server = MariaServer(binlog=True).start()
    result = Result(f"mariadb {lock}")
    try:
        server.sql("CREATE DATABASE bench")
        server.sql(
            "CREATE TABLE bench.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, w INT, v INT) "
            "ENGINE=InnoDB"
        )
        server.sql("INSERT INTO bench.t (w, v) SELECT 0, seq FROM bench.seq_1_to_1000")
        server.sql("CREATE TABLE bench.b (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        server.sql("INSERT INTO bench.b SELECT seq, 0 FROM bench.seq_1_to_200")
        box: dict[str, list[Span]] = {}
        maria_load(server, args.baseline, args, box).join()
        result.base = {k: [lat for _, lat in v] for k, v in box.items()}
        box = {}
        span = args.cycles * (args.hold + args.gap + 0.3) + 2
        load = maria_load(server, span, args, box)
        time.sleep(1.0)
        writer = MysqlWriter(MysqlSettings(name="bench", unix_socket=server.socket, lock=lock))
        windows = cycles(writer, args.cycles, args.hold, args.gap, result)
        load.join()
        result.during = {k: overlapping(v, windows) for k, v in box.items()}
    finally:
        server.remove()
    return result


# -- report -------------------------------------------------------------------------------------


def table(results: list[Result], hold: float) -> str:
    head = (
        "strategy",
        "load",
        "blocked mean/max ms",
        "over hold max ms",
        "lock call max ms",
        "prepare / finish max ms",
        "baseline p99/max ms",
        "during p99/max ms",
        "n during",
    )
    rows = []
    for r in results:
        for kind in r.base:
            base, during = r.base[kind], r.during.get(kind, [])
            rows.append(
                (
                    r.name,
                    kind,
                    f"{statistics.mean(r.windows) * 1e3:.0f} / {max(r.windows) * 1e3:.0f}",
                    f"{(max(r.windows) - hold) * 1e3:.0f}",
                    f"{max(r.freeze_calls) * 1e3:.1f}",
                    f"{max(r.prepares) * 1e3:.0f} / {max(r.finishes) * 1e3:.0f}",
                    f"{pct(base, 99) * 1e3:.1f} / {max(base) * 1e3:.1f}",
                    f"{pct(during, 99) * 1e3:.1f} / {max(during, default=float('nan')) * 1e3:.1f}",
                    str(len(during)),
                )
            )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + " |"
        for row in [head, *rows]
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cycles",
        type=int,
        default=10,
        help="freeze cycles per strategy (default %(default)s; the issue's full run is 20)",
    )
    p.add_argument("--hold", type=float, default=1.0, help="seconds held per cycle")
    p.add_argument("--gap", type=float, default=0.5, help="seconds between cycles")
    p.add_argument("--baseline", type=float, default=8.0, help="seconds of load without freezes")
    p.add_argument("--clients", type=int, default=2, help="writer clients per database")
    p.add_argument("--pg-rate", type=int, default=200, help="pgbench transactions/s in total")
    p.add_argument("--my-rate", type=int, default=100, help="transactions/s per MariaDB client")
    p.add_argument(
        "--only",
        choices=["postgres", "ftwrl", "backup_stage"],
        action="append",
        help="run only these strategies",
    )
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    chosen = args.only or ["postgres", "ftwrl", "backup_stage"]
    results = []
    t0 = time.monotonic()
    try:
        for name in chosen:
            r = bench_postgres(args) if name == "postgres" else bench_mysql(args, name)
            results.append(r)
            print(f"{r.name}: done ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    finally:
        remove_templates()
    print(f"{args.cycles} cycles x {args.hold:g} s hold per strategy; {os.cpu_count()} CPUs\n")
    print(table(results, args.hold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
