"""What does a quiesced snapshot cost the clients? blocked_ms and client latency under load.

    sudo .venv/bin/python benchmarks/quiesced_snapshot.py              # ~2 min, both loads
    sudo .venv/bin/python benchmarks/quiesced_snapshot.py --load demo --json out.json

Builds the demo's lab (host/lab: an engine disk served through FUSE, ext4 loop-mounted on it,
private PostgreSQL and MariaDB with their data there, the agent configured for both and for
that one filesystem), runs a load, and measures it alone (the baseline), then while CYCLES
quiesced snapshots are taken, one every INTERVAL seconds, each by the whole command a user
runs (``quiesce-host snapshot create DISK NAME --quiesce unix:SOCK``, interpreter start
included). Two loads, each on a fresh lab:

- ``demo``: the demo's paced single-row inserts, RATE/s into each database;
- ``heavy``: pgbench (TPC-B-like, PG_RATE tx/s, 4 clients) on PostgreSQL, MY_RATE single-row
  inserts/s into MariaDB from 8 clients, and a writer that keeps 64 MiB of the filesystem's
  page cache dirty (it rewrites a 64 MiB file at 64 MiB/s, never syncing).

Per snapshot, from its record: ``blocked_ms`` (the agent's: first lock that can block a client
to the release of the last one), each writer's share of it, the host's held window (freeze
sent -> thaw reply) and the whole command's time. Client latency is per transaction (sent ->
acknowledged); "during" takes those that overlap a snapshot (the agent's freeze arrival to
the end of its work), "no snapshot" the baseline. Targets (this machine, the demo load):
blocked p50 <= 100 ms and max <= 200 ms, each database's worst client latency during a
snapshot <= 150 ms, the whole command <= 1 s. The heavy load has no target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.snapshot_figures import Span, latencies, latency_lines, split_lines  # noqa: E402
from host.lab.load import InsertLoad, create_tables  # noqa: E402
from host.lab.local import Lab, console_script, missing_requirements  # noqa: E402
from host.snapshots.target import load_snapshot  # noqa: E402

WALL_TO_MONO = time.time() - time.monotonic()  # one machine: both clocks from one offset


class Dirtier:
    """Keeps up to 64 MiB of a file on the lab's filesystem dirty in the page cache."""

    def __init__(self, path: Path, mib: int = 64, rate_mib: float = 64.0) -> None:
        self.path, self.mib, self.pause = path, mib, 1.0 / rate_mib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dirtier", daemon=True)

    def start(self) -> Dirtier:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        block = os.urandom(1 << 20)
        with open(self.path, "wb") as f:
            while not self._stop.is_set():
                for i in range(self.mib):
                    f.seek(i << 20)
                    f.write(block)
                    if self._stop.wait(self.pause):
                        return


class Pgbench:
    """pgbench against the lab's PostgreSQL, each transaction's latency from its log."""

    def __init__(self, lab: Lab, logdir: Path, rate: int, clients: int = 4) -> None:
        self.lab, self.logdir, self.rate, self.clients = lab, logdir, rate, clients
        self.proc: subprocess.Popen[bytes] | None = None

    def _cmd(self, *args: str) -> list[str]:
        pg = self.lab.pg
        return [str(pg.bindir / "pgbench"), "-h", str(pg.rundir), "-U", "postgres", *args]

    def start(self, seconds: float) -> Pgbench:
        subprocess.run(
            self._cmd("-i", "-q", "-s", "4", "postgres"), check=True, capture_output=True
        )
        self.proc = subprocess.Popen(
            self._cmd(
                *("-c", str(self.clients), "-j", "2", "-T", str(int(seconds + 1))),
                *("-R", str(self.rate), "-l", f"--log-prefix={self.logdir / 'pgbench'}"),
                *("-n", "postgres"),
            ),
            cwd=str(self.logdir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def transactions(self) -> list[tuple[float, float]]:
        """(sent, acknowledged) per transaction, monotonic. pgbench's time counts from the
        scheduled start under -R; its schedule lag (the last field) is taken off, so that a
        transaction counts from when it was sent, as the insert probes do."""
        out = []
        for path in self.logdir.glob("pgbench.*"):
            for line in path.read_text().splitlines():
                f = line.split()
                if len(f) >= 7 and f[2].isdigit():
                    end = int(f[4]) + int(f[5]) / 1e6 - WALL_TO_MONO
                    out.append((end - (int(f[2]) - int(f[6])) / 1e6, end))
        return out


def inserts(name: str, lab: Lab, rate: float, clients: int) -> list[InsertLoad]:
    """Paced single-row inserts into demo_rows from ``clients`` connections (ids apart)."""
    if name == "PostgreSQL":
        connect, sql = lab.pg.connect, "INSERT INTO demo_rows (id) VALUES (%s + {k})"
    else:
        connect, sql = lab.maria.connect, "INSERT INTO demo.demo_rows (id) VALUES (%s + {k})"
    return [
        InsertLoad(f"{name}{k}", connect, sql.format(k=k * 100_000_000), rate / clients).start()
        for k in range(clients)
    ]


def blocked_of(agent: dict[str, Any]) -> float:
    """The report's blocked_ms; for an agent that predates it, the same span from its parts:
    first lock -> filesystems thawed, then the releases that followed (PostgreSQL's
    pg_backup_stop and MariaDB's unlock came after the filesystems)."""
    t = agent["timings"]
    if t.get("blocked_ms") is not None:
        return float(t["blocked_ms"])
    after = sum(w.get("thaw_ms", 0.0) for w in agent["writers"] if w["kind"] != "filesystems")
    return float(t["held_ms"]) + after


def agent_span(agent: dict[str, Any]) -> Span:
    """The agent's work on one snapshot (freeze arrival -> last step done), monotonic."""
    t0 = datetime.fromisoformat(agent["started"]).timestamp() - WALL_TO_MONO
    t = agent["timings"]
    length = float(t["prepare_ms"]) + blocked_of(agent) + float(t.get("finish_ms") or 0.0)
    return t0, t0 + length / 1000


def snapshots(lab: Lab, cycles: int, interval: float, tag: str) -> tuple[list[dict], list[Span]]:
    """CYCLES snapshots by the whole command; per snapshot its figures, and the spans."""
    rows, spans = [], []
    cli = console_script("quiesce-host")
    for i in range(cycles):
        time.sleep(interval)
        name = f"{tag}{i:02d}"
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                cli,
                "snapshot",
                "create",
                str(lab.disk),
                name,
                "--quiesce",
                f"unix:{lab.agent_socket}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
        command_ms = (time.monotonic() - t0) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"snapshot {name}: exit {proc.returncode}\n{proc.stderr}")
        record = load_snapshot(lab.disk, name)
        assert record["consistency"] == "application", record["consistency"]
        agent, host = record["report"]["agent"], record["report"]["host"]
        shares = {w["name"]: w.get("blocked_share_ms") for w in agent["writers"]}
        rows.append(
            {
                "blocked": blocked_of(agent),
                "window": host["window_ms"],
                "command": round(command_ms, 1),
                "prepare": agent["timings"]["prepare_ms"],
                "switch": host["split"]["switch_ms"],
                "cut_to_thaw": host.get("cut_to_thaw_ms"),
                "shares": shares,
            }
        )
        spans.append(agent_span(agent))
    return rows, spans


def run_load(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731 - the lab's progress
    lab = Lab(say=say)
    logdir = Path(tempfile.mkdtemp(prefix="qbench-"))
    stoppers: list[Any] = []
    try:
        say(f"[{kind}] building the lab in {lab.root}")
        lab.build()
        create_tables(lab)
        probes: dict[str, list[InsertLoad]] = {}
        pgbench = None
        if kind == "demo":
            probes["PostgreSQL"] = inserts("PostgreSQL", lab, args.rate, 1)
            probes["MariaDB"] = inserts("MariaDB", lab, args.rate, 1)
        else:
            length = args.baseline + args.cycles * (args.interval + 1.5) + 10
            pgbench = Pgbench(lab, logdir, args.pg_rate).start(length)
            stoppers.append(pgbench)
            probes["MariaDB"] = inserts("MariaDB", lab, args.my_rate, 8)
            stoppers.append(Dirtier(lab.mnt / "dirty.bin").start())
        stoppers += [ld for lds in probes.values() for ld in lds]
        time.sleep(2.0)  # warm up
        t0 = time.monotonic()
        time.sleep(args.baseline)
        base = [(t0, time.monotonic())]
        say(f"[{kind}] {args.cycles} quiesced snapshots")
        rows, spans = snapshots(lab, args.cycles, args.interval, kind[0])
        time.sleep(0.5)
        for s in reversed(stoppers):
            s.stop()
        errors = [f"{ld.name}: {ld.error}" for lds in probes.values() for ld in lds if ld.error]
        if errors:
            raise RuntimeError("the load failed: " + "; ".join(errors))
        txs = {name: [(s, a) for ld in lds for _, s, a in ld.rows] for name, lds in probes.items()}
        if pgbench is not None:
            txs = {"PostgreSQL (pgbench)": pgbench.transactions(), **txs}
        seconds = spans[-1][1] - base[0][0]
        rates = {
            name: round(len([1 for s, _ in t if s >= t0]) / seconds) for name, t in txs.items()
        }
        return {
            "cycles": rows,
            "latency": {
                name: {"baseline": latencies(t, base), "during": latencies(t, spans)}
                for name, t in txs.items()
            },
            "rates": rates,
        }
    finally:
        for s in reversed(stoppers):
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - tearing down
                pass
        lab.close()
        subprocess.run(["rm", "-rf", str(logdir)], check=False)


def report(kind: str, r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    rows = r["cycles"]
    lines = split_lines(
        rows,
        (
            ("blocked", "blocked_ms (agent)"),
            ("window", "held window (freeze sent -> thaw reply)"),
            ("command", "whole snapshot create --quiesce"),
            ("prepare", "prepare (nothing blocked)"),
            ("switch", "switch (flush + new delta)"),
            ("cut_to_thaw", "cut recorded -> thaw sent"),
        ),
        34,
    )
    lines += ["", *latency_lines(r["latency"], r["rates"])]
    if kind == "demo":
        blocked = [c["blocked"] for c in rows]
        worst = max(lat["during"]["worst"] for lat in r["latency"].values())
        command = max(c["command"] for c in rows)
        checks = [
            ("blocked_ms p50 <= 100", statistics.median(blocked) <= 100),
            ("blocked_ms max <= 200", max(blocked) <= 200),
            (f"worst client latency during a snapshot <= 150 ({worst:.1f})", worst <= 150),
            (f"whole command <= 1000 ({command:.1f} at worst)", command <= 1000),
        ]
        lines += [
            "",
            "targets: " + "; ".join(f"{t}: {'met' if ok else 'NOT met'}" for t, ok in checks),
        ]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=16, help="snapshots per load (at most 32)")
    ap.add_argument("--interval", type=float, default=1.5, help="seconds between snapshots")
    ap.add_argument("--baseline", type=float, default=10.0, help="seconds of load alone")
    ap.add_argument("--rate", type=float, default=200.0, help="demo: inserts/s per database")
    ap.add_argument("--pg-rate", type=int, default=300, help="heavy: pgbench transactions/s")
    ap.add_argument("--my-rate", type=float, default=2000.0, help="heavy: MariaDB inserts/s")
    ap.add_argument("--load", choices=["demo", "heavy", "both"], default="both")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    if not 1 <= args.cycles <= 32:
        ap.error("--cycles: 1..32 (one chain holds 32 snapshots)")
    missing = missing_requirements()
    if missing:
        print("quiesced_snapshot: missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    kinds = ["demo", "heavy"] if args.load == "both" else [args.load]
    load_before = os.getloadavg()
    results = {kind: run_load(kind, args) for kind in kinds}
    load_after = os.getloadavg()
    print(
        f"\nquiesced snapshots: PostgreSQL + MariaDB + one ext4 on a disk served through FUSE; "
        f"{args.cycles} per load, one every {args.interval:g} s; {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    for kind in kinds:
        title = (
            f"demo load: {args.rate:g} inserts/s into each database"
            if kind == "demo"
            else f"heavy load: pgbench {args.pg_rate} tx/s (4 clients), {args.my_rate:g} "
            "inserts/s into MariaDB (8 clients), 64 MiB kept dirty"
        )
        print(f"\n{title}\n")
        print("\n".join(report(kind, results[kind], args)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
