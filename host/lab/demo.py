"""``quiesce-host demo``: the whole promise in one command, on a throw-away lab.

1. build the lab (host.lab.local): engine disk served through FUSE, ext4 on it, PostgreSQL and
   MariaDB with their data there, an agent configured for exactly those;
2. a steady insert load into both databases;
3. a quiesced snapshot through the agent and the server's control socket;
4. keep writing, then stop: databases stopped, filesystem unmounted, FUSE server stopped;
5. revert the disk to the snapshot (the engine, with nothing holding the disk);
6. serve, mount, start both databases from the reverted disk (crash recovery);
7. the verdict: every row acknowledged before the freeze reply is there, none sent after the
   thaw reply is; rows in flight at the cut may go either way and are counted.

Everything the lab made is removed at the end, also on Ctrl-C or SIGTERM.
Exit codes: 0 the verdict holds, 1 it does not, 2 the lab could not be built, 130 interrupted.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from common.errors import QuiesceError
from host.lab.databases import LabError
from host.lab.load import InsertLoad, create_tables, present_ids, start_loads
from host.lab.local import Lab, missing_requirements
from host.snapshots.cycle import Outcome, take
from host.snapshots.report import full
from host.snapshots.target import open_target

L = TypeVar("L")  # a lab: the local one (Lab) or the VM one (host.lab.vmlab.VMLab)

SNAPSHOT = "demo-before-change"


@dataclass
class Verdict:
    """One database's rows against the cut."""

    name: str
    before: int  # acknowledged before every writer held
    before_missing: int
    after: int  # sent after the thaw reply
    after_present: int
    in_flight: int
    in_flight_present: int
    holes: int  # missing ids below the highest present one (should never happen)

    @property
    def ok(self) -> bool:
        return (
            self.before > 0
            and not self.before_missing
            and not self.after_present
            and not self.holes
        )

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return (
            f"{mark} {self.name}: {self.before} rows acknowledged before the snapshot, "
            f"{self.before - self.before_missing} present; {self.after} written after it, "
            f"{self.after_present} present; {self.in_flight} in flight at the cut, "
            f"{self.in_flight_present} present" + (f"; {self.holes} HOLES" if self.holes else "")
        )


def judge(
    name: str,
    rows: list[tuple[int, float, float]],
    sent: dict[int, float],
    present: set[int],
    frozen_at: float,
    thawed_at: float,
) -> Verdict:
    acked = {i: a for i, _, a in rows}
    before = {i for i, a in acked.items() if a <= frozen_at}
    after = {i for i, s in sent.items() if s >= thawed_at}
    flight = set(sent) - before - after
    top = max(present, default=0)
    return Verdict(
        name,
        len(before),
        len(before - present),
        len(after),
        len(after & present),
        len(flight),
        len(flight & present),
        len(set(range(1, top + 1)) - present),
    )


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", flush=True)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def no_interrupts() -> Iterator[None]:
    """Cleanup runs to its end: a second Ctrl-C must not leave mounts behind."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def run_demo(
    seconds: float = 3.0, rate: float = 200.0, keep: bool = False, parent: str | None = None
) -> int:
    """The whole demo on a lab made under ``parent`` (default: the temp dir); its exit code.
    ``keep`` leaves the lab running for a look around."""

    def play(lab: Lab, clock: Clock) -> int:
        verdicts, _ = scenario(lab, clock, seconds, rate)
        return print_outcome(verdicts)

    def clean_up(lab: Lab, clock: Clock) -> None:
        if keep:
            clock.say(f"--keep: the lab stays at {lab.root}")
            return
        clock.say("cleaning up the lab")
        lab.close()
        clock.say(f"removed {lab.root}")

    return run_lab(
        "quiesce-host demo",
        missing_requirements(),
        lambda clock: Lab(parent=parent, say=clock.say),
        play,
        clean_up,
    )


def run_lab(
    command: str,
    missing: list[str],
    make: Callable[[Clock], L],
    play: Callable[[L, Clock], int],
    clean_up: Callable[[L, Clock], None],
    failed: Callable[[L, QuiesceError], None] = lambda lab, err: None,
) -> int:
    """A demo's frame, the local one's and the VM one's: refuse with what is ``missing``
    (exit 2); else ``make`` the lab and ``play`` it (its exit code), a QuiesceError printed
    (its exit code, after ``failed``), Ctrl-C or SIGTERM 130; ``clean_up`` whatever was made,
    in every case and with further interrupts held off."""
    if missing:
        print(f"{command}: cannot run here; missing:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    clock = Clock()
    lab: L | None = None
    with sigterm_as_interrupt():
        try:
            lab = make(clock)
            return play(lab, clock)
        except KeyboardInterrupt:
            clock.say("interrupted: cleaning up")
            return 130
        except QuiesceError as err:  # a lab step, a boot, the quiesce, a server, the engine
            print(f"{command}: {err}", file=sys.stderr)
            if lab is not None:
                failed(lab, err)
            return err.exit_code
        finally:
            if lab is not None:
                with no_interrupts():
                    clean_up(lab, clock)


def scenario(lab: Lab, clock: Clock, seconds: float, rate: float) -> tuple[list[Verdict], Outcome]:
    """The demo's steps; returns the verdicts and the snapshot's outcome."""
    clock.say(f"building the lab in {lab.root}")
    lab.build()
    clock.say(
        f"disk served through FUSE at {lab.fuse}/disk.raw, ext4 mounted at {lab.mnt}; "
        f"PostgreSQL and MariaDB running on it; agent at {lab.agent_socket}"
    )
    create_tables(lab)
    loads = start_loads(lab, rate)
    clock.say(f"insert load running: {rate:g} rows/s into each database")
    time.sleep(seconds)
    clock.say(f"quiesced snapshot {SNAPSHOT!r} (agent unix:{lab.agent_socket})")
    target = open_target(lab.disk)
    try:
        outcome = take(
            target, SNAPSHOT, f"unix:{lab.agent_socket}", description="quiesce-host demo"
        )
    finally:
        target.close()
    record = outcome.shown()
    print("\n".join("    " + line for line in full(record)), flush=True)
    time.sleep(seconds)
    for load in loads:
        load.stop()
    errors = [f"{ld.name}: {ld.error}" for ld in loads if ld.error]
    if errors:
        raise LabError("the insert load failed: " + "; ".join(errors))
    m = outcome.moments
    print(latency_lines(loads, m["freeze_sent"], m["thawed"]), flush=True)
    clock.say("stopping the databases, unmounting, stopping the FUSE server")
    lab.take_down()
    target = open_target(lab.disk)  # the engine now: nothing holds the disk
    try:
        target.disk.snapshot_revert(SNAPSHOT)  # type: ignore[union-attr]
    finally:
        target.close()
    clock.say(f"reverted the disk to {SNAPSHOT!r}: everything after it is discarded")
    lab.bring_up()
    clock.say("served, mounted and restarted both databases from the reverted disk")
    for line in recovery_notes(lab.pg.log_tail(), lab.maria.log_tail()):
        print("    " + line)
    return verdicts_of(loads, present_ids(lab), m), outcome


def verdicts_of(
    loads: list[InsertLoad], present: dict[str, set[int]], moments: dict[str, float]
) -> list[Verdict]:
    """Each load's rows judged against the cut, printed."""
    frozen, thawed = moments["frozen"], moments["thawed"]
    verdicts = [judge(ld.name, ld.rows, ld.sent, present[ld.name], frozen, thawed) for ld in loads]
    print(
        "\nverdict (the cut: rows acknowledged before the freeze reply must be there, rows "
        "sent after the thaw reply must not):"
    )
    for v in verdicts:
        print("  " + v.line())
    return verdicts


def print_outcome(verdicts: list[Verdict]) -> int:
    """The last line of a demo, and its exit code: 0 when every verdict holds, else 1."""
    ok = all(v.ok for v in verdicts)
    print(
        "\nVERDICT: "
        + (
            "PASS: the snapshot holds every acknowledged row before it and none after it"
            if ok
            else "FAIL"
        )
    )
    return 0 if ok else 1


def latency_lines(loads: list[Any], start: float, end: float) -> str:
    out = ["    client latency (ms): worst outside the snapshot window / worst inside it"]
    for ld in loads:
        inside = ld.latencies(start, end)
        outside = ld.latencies(0, start) + ld.latencies(end, float("inf"))
        out.append(
            f"      {ld.name}: {max(outside, default=0):.1f} / "
            f"{max(inside, default=0):.1f}  ({len(ld.rows)} rows acknowledged)"
        )
    return "\n".join(out)


def recovery_notes(pg: str, maria: str) -> list[str]:
    """What each server's log (its tail) says about the restart from the snapshot."""
    out = []
    if "automatic recovery in progress" in pg or "redo done" in pg:
        out.append(
            "PostgreSQL: crash recovery from the snapshot (no backup_label needed: "
            "non-exclusive backup mode left none in the image)"
        )
    if "crash recovery" in maria.lower() or "Starting final batch to recover" in maria:
        out.append("MariaDB: InnoDB crash recovery from the snapshot")
    return out
