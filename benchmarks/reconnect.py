#!/usr/bin/env python3
"""The agent on a real virtio-serial port, in a QEMU guest (issue 11): reconnects, the CLI
through the chardev, and how fast a guest is thawed when its host dies.

Boots the VM lab's guest image once (tests/helpers/guest.py: a data disk of its own, the
agent freezing only that), then measures:

- ``--connections`` back-to-back host connections (connect, ``ping``, close): how many got
  no reply, and the latency percentiles of connect + ping;
- ``quiesce-agent ping --socket CHARDEV`` run on this machine, a new process each time: wall
  time percentiles (the CLI's start plus a round trip through QEMU to the guest);
- quiesce-host's cycle SIGKILLed between the cut and the thaw (a bound freeze): the time from
  the kill to the agent saying idle, i.e. its filesystem thawed, ``--kills`` times;
- the agent SIGKILLed in the guest while frozen: the time from the kill to the host's report.

Goals: 0 lost of 200; connect + ping under 300 ms under TCG (50 ms with KVM); the guest
writable within 1 s of the host's death; the agent's death reported within the guard's thaw
plus 5 s. TCG on a shared 2-core machine inflates every figure.

    QUIESCE_VM_ACCEL=tcg .venv/bin/python benchmarks/reconnect.py [--connections 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import protocol  # noqa: E402
from host.engine.disk import Disk  # noqa: E402
from host.lab.image import build_image, default_cache  # noqa: E402
from host.snapshots.cycle import QuiesceFailed, take  # noqa: E402
from host.snapshots.target import open_target  # noqa: E402
from tests.helpers.guest import Guest, KillAgentWhenFrozen, booted  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def row(name: str, ms: list[float], extra: str = "") -> str:
    if not ms:
        return f"| {name} | - | - | - | - | {extra} |"
    p50, p90, p99 = (pct(ms, p) for p in (50, 90, 99))
    return f"| {name} | {p50:.1f} | {p90:.1f} | {p99:.1f} | {max(ms):.1f} | {extra} |"


def reconnects(g: Guest, n: int) -> tuple[int, list[float]]:
    lost, ms = 0, []
    for _ in range(n):
        t = time.perf_counter()
        try:
            with protocol.Client(g.vm.agent_endpoint, 5.0) as c:
                c.ping()
            ms.append((time.perf_counter() - t) * 1000)
        except protocol.NoReply:
            lost += 1
    return lost, ms


def cli_pings(g: Guest, n: int) -> list[float]:
    cli = str(Path(sys.executable).parent / "quiesce-agent")
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(
            [cli, "ping", "--socket", str(g.vm.agent_socket)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        ms.append((time.perf_counter() - t) * 1000)
    return ms


def idle(g: Guest) -> bool:
    with protocol.Client(g.vm.agent_endpoint, 5.0) as c:
        return c.status()["state"] == "idle"


def host_kills(g: Guest, n: int) -> list[float]:
    ms = []
    for i in range(n):
        disk = g.run_dir / f"bench-disk-{i}"
        Disk.create(disk, 16 << 20).close()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.held_cycle", str(disk), g.vm.agent_endpoint, "k"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "frozen":
            proc.kill()
            raise SystemExit(f"the cycle did not reach the cut: {proc.communicate()[0]}")
        t = time.perf_counter()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        while not idle(g):
            time.sleep(0.02)
        ms.append((time.perf_counter() - t) * 1000)
    return ms


def agent_death(g: Guest) -> float:
    disk = g.run_dir / "bench-disk-agent"
    Disk.create(disk, 16 << 20).close()
    kill = KillAgentWhenFrozen(g, g.agent_pid())
    target = open_target(disk)
    try:
        take(target, "agent-died", g.vm.agent_endpoint, faults=kill)
    except QuiesceFailed:
        pass
    finally:
        target.close()
    if kill.killed_at is None:
        raise SystemExit("the freeze never answered: the agent was not killed")
    took = (time.monotonic() - kill.killed_at) * 1000
    g.vm.wait_agent(120)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--cli-runs", type=int, default=20)
    ap.add_argument("--kills", type=int, default=3)
    args = ap.parse_args()
    image = build_image(default_cache(), log=lambda m: None)
    with booted(image, log=lambda m: print(f"# {m}", flush=True)) as g:
        lost, ms = reconnects(g, args.connections)
        cli = cli_pings(g, args.cli_runs)
        kills = host_kills(g, args.kills)
        death = agent_death(g)
        accel = g.vm.accel
    print(f"\nguest under {accel}; times in ms\n")
    print("| what | p50 | p90 | p99 | max | |")
    print("|---|---|---|---|---|---|")
    print(row(f"connect + ping, {args.connections} back to back", ms, f"{lost} lost"))
    print(row("`quiesce-agent ping` through the chardev (host CLI)", cli))
    print(row("SIGKILL of quiesce-host mid bound freeze -> guest thawed", kills))
    print(row("agent SIGKILLed while frozen -> host reports it", [death]))
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
