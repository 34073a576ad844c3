"""The freeze state machine: prepare -> lock in order -> (snapshot) -> release -> finish.

    IDLE --freeze--> PREPARING --> FREEZING --> FROZEN --thaw--> THAWING --> IDLE
                         |             |           |--abort--> ABORTING --> IDLE
                         +-- failure --+--> rollback (freezeFail, reverse order) --> IDLE
    the ceiling (a thread, not the event loop) releases everything held: RELEASING --> IDLE

What goes where (DESIGN.md, "The freeze cycle"): prepare is everything that blocks no
client: the database writers concurrently with the scripts' prepares (which run one after
another, in byte-wise order: a ``scripts.concurrent`` script freezes there), and the
filesystems' syncfs once those are done, right before the first lock. The lock step takes
only what blocks clients, in order: scripts, MySQL/MariaDB, filesystems (FIFREEZE); a
filesystem's freeze never starts before the database locks are granted (a commit the lock
waits for would block on the frozen filesystem). The release frees them in reverse at once;
only then ``finish``: pg_backup_stop, the concurrent scripts' thaw.

Writer calls run in worker threads so ``ping`` and ``status`` answer during a freeze; each
call is bounded by the freeze budget. The ceiling clock starts at the first lock; its thread
takes the session lock only to decide and record, never while a writer releases. Whether the
snapshot is consistent is decided when the thaw arrives: a release that then runs past the
ceiling is finished by the ceiling and reported (``released_late``), not held against the
snapshot. Every reply carries a report: each writer, its state, step timings and messages.

A freeze may be bound to the host connection that asked for it (DESIGN.md, freeze cycle step
7): when that ``Peer`` goes (its connection closed, or the virtio-serial host hung up) before
the thaw, ``host_gone`` undoes the freeze at once with freezeFail semantics; a freeze still
in progress rolls back at its next step (before the next lock), so nothing is held for a
host that can no longer thaw it.

Raises: StateError (wrong state), WriterError/WriterTimeout (rolled back), NotConsistent,
HostGone (a bound freeze whose host went away before it was done: rolled back).
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 - asyncio.to_thread loads it lazily otherwise
import logging
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

from agent.cycle import Cycle, Entry, safe_artifacts
from agent.errors import HostGone, NotConsistent, StateError
from agent.protocol import Report, Status
from common.deadline import Deadline
from common.errors import QuiesceError
from hooks.base import Operation, Stage, Writer
from hooks.errors import WriterError, WriterTimeout

logger = logging.getLogger(__name__)
THAW_STEP_SECONDS = 30.0  # bound for each writer's thaw (pg_backup_stop waits for archiving)
# After the last release, the clients that were blocked commit their backlog; pg_backup_stop
# (a WAL switch and fsyncs on the same filesystem journal) waits this long so as not to stall
# them again: without it, MariaDB commits held by BLOCK_COMMIT finished 30-240 ms after the
# release, with it 1-32 ms; it costs the thaw reply 50 ms and blocked_ms nothing.
DRAIN_SECONDS = 0.05


class State(Enum):
    IDLE = "idle"  # nothing held
    PREPARING = "preparing"  # writers doing slow work, nothing locked yet
    FREEZING = "freezing"  # taking locks in order
    FROZEN = "frozen"  # every writer holds; waiting for thaw or abort
    THAWING = "thawing"  # releasing in reverse order
    ABORTING = "aborting"  # freezeFail rollback in reverse order
    RELEASING = "releasing"  # the ceiling is releasing what is still held; no new freeze yet


# An entry in one of these states may hold something the ceiling has to release.
HELD = frozenset({"prepared", "freezing", "frozen", "thawing", "failed"})


class Hooks(Protocol):
    """What the session tells the outside world (guard, marker, log buffer)."""

    def hold(self, path: str, held: bool) -> None: ...
    def arm(self, deadline: float) -> None: ...
    def disarm(self) -> None: ...
    def ensure_guard(self) -> None: ...
    def frozen_logging(self, frozen: bool) -> None: ...


class Peer:
    """One host connection as the session sees it: a freeze can be bound to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gone = False  # set by the server when the connection closes or the host hangs up

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, gone={self.gone})"


WriterFactory = Callable[[list[str] | None], tuple[list[Writer], list[str]]]


class Session:
    """The one freeze session of a daemon."""

    def __init__(
        self, factory: WriterFactory, hooks: Hooks, ceiling: float, timeout: float
    ) -> None:
        self.factory = factory
        self.hooks = hooks
        self.ceiling = ceiling
        self.timeout = timeout
        self.state = State.IDLE
        self.cycle: Cycle | None = None
        self._op = asyncio.Lock()  # one freeze/thaw/abort at a time
        self._mu = threading.Lock()  # state changes vs the ceiling thread
        self._timer: threading.Timer | None = None
        self._ceiling_at: float | None = None
        self._ceiling_running = False  # the ceiling thread is releasing (under _mu)
        self._bound_to: Peer | None = None  # the host a bound freeze lives on, until its thaw

    # -- helpers ---------------------------------------------------------------------------
    def _set(self, state: State) -> None:
        elapsed = (time.monotonic() - self.cycle.t0) * 1000 if self.cycle else 0.0
        logger.info(
            "state %s -> %s (%.1f ms into the cycle)", self.state.value, state.value, elapsed
        )
        self.state = state

    def _operation(self, cycle: Cycle, deadline: Deadline) -> Operation:
        by_name = {e.writer.qualified_name: e for e in cycle.entries}

        def sink(writer: str, msg: str) -> None:
            entry = by_name.get(writer)
            if entry is not None and len(entry.messages) < 200:
                entry.messages.append(msg)
            logger.info("%s: %s", writer, msg)

        return Operation(cycle.label, deadline, sink=sink, holder=self.hooks.hold)

    async def _call(self, entry: Entry, step: str, op: Operation, budget: float) -> None:
        """Run one writer step in a thread, bounded by ``budget`` seconds; time it."""
        start = entry.at[step] = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                await asyncio.to_thread(getattr(entry.writer, step), op)
        except TimeoutError as err:
            await asyncio.to_thread(entry.writer.emergency_release)
            raise WriterTimeout(
                entry.writer.qualified_name, f"{step} did not finish within {budget:.1f} s"
            ) from err
        finally:
            entry.ms[step] = (time.monotonic() - start) * 1000

    # -- commands --------------------------------------------------------------------------
    async def freeze(
        self,
        label: str,
        names: list[str] | None = None,
        timeout: float | None = None,
        bound_to: Peer | None = None,
    ) -> Report:
        async with self._op:
            if self.state is not State.IDLE:  # RELEASING too: the ceiling is not done yet
                raise StateError(
                    f"a freeze ({self.cycle.label if self.cycle else '?'}) is "
                    f"already {self.state.value}; thaw or abort it first"
                )
            budget = min(timeout or self.timeout, self.timeout, self.ceiling)
            writers, notes = self.factory(names)
            writers.sort(key=lambda w: int(w.stage))  # stable: scripts keep byte-wise order
            cycle = Cycle(label, [Entry(w) for w in writers], self.ceiling, notes)
            cycle.bound = bound_to is not None
            self.cycle, self._bound_to = cycle, bound_to
            self.hooks.ensure_guard()
            deadline = Deadline(budget)
            op = self._operation(cycle, deadline)
            self._set(State.PREPARING)
            try:
                await self._prepare(cycle, op, deadline)
                await self._freeze_all(cycle, op, deadline)
            except QuiesceError as err:
                self._bound_to = None
                gone = isinstance(err, HostGone)
                await self._rollback(cycle, op, "aborted: the host went away" if gone else "failed")
                err.data["report"] = cycle.as_dict()
                raise
            return cycle.as_dict()

    async def _prepare(self, cycle: Cycle, op: Operation, deadline: Deadline) -> None:
        """Scripts one after another (byte-wise order), concurrently with the other writers;
        the filesystems last, so their syncfs flushes what the others' prepare wrote."""
        scripts = [e for e in cycle.entries if e.writer.stage is Stage.SCRIPTS]
        last = [e for e in cycle.entries if e.writer.stage is Stage.FILESYSTEMS]
        others = [e for e in cycle.entries if e not in scripts and e not in last]

        async def in_order(entries: list[Entry]) -> QuiesceError | None:
            for entry in entries:
                failed = await self._prepare_one(entry, op, deadline)
                if failed is not None:
                    return failed
            return None

        results = await asyncio.gather(
            in_order(scripts), *(self._prepare_one(e, op, deadline) for e in others)
        )
        failed = next((r for r in results if r is not None), None)
        if failed is None:
            results = await asyncio.gather(*(self._prepare_one(e, op, deadline) for e in last))
            failed = next((r for r in results if r is not None), None)
        if failed is not None:
            raise failed

    async def _prepare_one(
        self, entry: Entry, op: Operation, deadline: Deadline
    ) -> QuiesceError | None:
        """One writer's prepare; its error (a writer bug becomes a WriterError), or None."""
        if not _has_step(entry.writer, "prepare"):
            entry.state = "prepared"
            return None
        try:
            await self._call(entry, "prepare", op, deadline.remaining())
        except Exception as err:  # noqa: BLE001 - a writer bug still rolls back
            failed = (
                err
                if isinstance(err, QuiesceError)
                else WriterError(entry.writer.qualified_name, f"prepare: unexpected error: {err!r}")
            )
            entry.state, entry.error = "failed", str(failed)
            return failed
        entry.state = "prepared"
        return None

    async def _freeze_all(self, cycle: Cycle, op: Operation, deadline: Deadline) -> None:
        self._set(State.FREEZING)
        self.hooks.frozen_logging(True)
        self._check_host()
        cycle.first_lock = time.monotonic()
        self._start_ceiling(cycle.first_lock + self.ceiling)
        for entry in cycle.entries:
            self._check_host()
            entry.state = "freezing"
            try:
                await self._call(entry, "freeze", op, deadline.remaining())
            except QuiesceError as err:
                entry.state, entry.error = "failed", str(err)
                raise
            except Exception as err:  # noqa: BLE001 - a writer bug still rolls back
                entry.state, entry.error = "failed", repr(err)
                raise WriterError(
                    entry.writer.qualified_name, f"unexpected error: {err!r}"
                ) from err
            with self._mu:
                if cycle.ceiling_hit:
                    raise WriterTimeout(
                        entry.writer.qualified_name, "the ceiling was reached while freezing"
                    )
                entry.state = "frozen"
        with self._mu:
            cycle.all_frozen = time.monotonic()
            cycle.outcome = "frozen"
            self._set(State.FROZEN)
        logger.info(
            "frozen '%s': %d writer(s) in %.1f ms",
            cycle.label,
            len(cycle.entries),
            (cycle.all_frozen - cycle.first_lock) * 1000,
        )

    def _check_host(self) -> None:
        """Raises HostGone when the host a bound freeze lives on went away meanwhile."""
        peer = self._bound_to
        if peer is not None and peer.gone:
            raise HostGone(
                f"{peer.name} went away before the bound freeze was done; rolled back "
                "(freezeFail) rather than held for a host that cannot thaw it"
            )

    async def host_gone(self, peer: Peer) -> None:
        """``peer``'s connection closed, or its virtio-serial host hung up: a freeze bound to
        it and not yet thawed is undone now (freezeFail). Never raises."""
        peer.gone = True
        if self._bound_to is not peer:
            return
        cycle = self.cycle
        label = cycle.label if cycle else "?"
        logger.warning(
            "%s went away before thawing the bound freeze '%s': undoing it now (freezeFail)",
            peer.name,
            label,
        )
        async with self._op:  # a freeze in progress rolls back by itself (_check_host)
            if self._bound_to is not peer or self.state is not State.FROZEN or cycle is None:
                return
            cycle.notes.append(
                f"{peer.name} went away before the thaw: aborted at once (bound freeze)"
            )
            try:
                await self._release("abort", "aborted", "aborted: the host went away")
            except QuiesceError as err:
                logger.error("undoing the bound freeze '%s': %s", label, err)

    async def _rollback(self, cycle: Cycle, op: Operation, outcome: str) -> None:
        """freezeFail: undo every writer that prepared or (partly) froze, in reverse."""
        self._set(State.ABORTING)
        for entry in reversed(cycle.entries):
            if entry.state in ("pending", "released"):
                continue
            try:
                await self._call(entry, "abort", op, THAW_STEP_SECONDS)  # also frees prepare's work
                if entry.state != "failed":
                    entry.state = "not frozen" if entry.state == "prepared" else "aborted"
            except Exception as err:  # noqa: BLE001 - keep undoing the rest
                entry.error = (entry.error + "; " if entry.error else "") + f"abort: {err}"
        if cycle.first_lock is not None:
            cycle.unblocked = cycle.unblocked or time.monotonic()
        self._finish(cycle, outcome)

    def _finish(self, cycle: Cycle, outcome: str) -> None:
        self._stop_ceiling()
        self.hooks.disarm()
        with self._mu:
            cycle.released = cycle.released or time.monotonic()
            if not cycle.ceiling_hit:
                cycle.outcome = outcome
            for entry in cycle.entries:
                entry.artifacts = safe_artifacts(entry.writer)
            # a ceiling thread still releasing (a slow thaw script) ends the cycle itself
            self._set(State.RELEASING if self._ceiling_running else State.IDLE)
        self.hooks.frozen_logging(False)

    def _disarm_if_only_scripts(self, cycle: Cycle) -> None:
        """Disarm the dead-man guard once no filesystem and no database lock is held: it can
        only thaw filesystems and kill the daemon, which helps no script (a thaw script that
        runs long must not get the daemon killed)."""
        with self._mu:
            if cycle.disarmed or any(
                e.state in HELD and e.writer.stage is not Stage.SCRIPTS for e in cycle.entries
            ):
                return
            cycle.disarmed = True
        self.hooks.disarm()

    async def thaw(self) -> Report:
        async with self._op:
            return await self._release("thaw", "thawed", "thawed")

    async def abort(self) -> Report:
        async with self._op:
            return await self._release("abort", "aborted", "aborted")

    async def _release(self, step: str, entry_state: str, outcome: str) -> Report:
        cycle = self.cycle
        with self._mu:
            if (
                self.state in (State.IDLE, State.RELEASING)
                and cycle is not None
                and cycle.ceiling_hit
                and cycle.outcome == "ceiling"
            ):
                cycle.outcome = "ceiling, late " + step
                raise NotConsistent(
                    f"the {cycle.ceiling:g} s ceiling thawed '{cycle.label}' before the {step} "
                    "came: the snapshot is NOT consistent; take it again",
                    report=cycle.as_dict(),
                )
            if self.state is not State.FROZEN or cycle is None:
                raise StateError(
                    f"nothing is frozen (state {self.state.value}); "
                    f"{step} needs a successful freeze first"
                )
            self._bound_to = None  # the thaw or abort came: the host's going changes nothing
            if step == "thaw":  # consistency is decided now, whatever the release then takes
                cycle.thaw_came()
            self._set(State.THAWING if step == "thaw" else State.ABORTING)
        op = self._operation(cycle, Deadline(THAW_STEP_SECONDS))
        failures: list[tuple[str, str]] = []  # (the writer's own full name, what failed)
        for entry in reversed(cycle.entries):
            with self._mu:
                if entry.state != "frozen":  # not held, or the ceiling released it
                    continue
                entry.state = "thawing"
            try:
                await self._call(entry, step, op, THAW_STEP_SECONDS)
                entry.state = entry_state
            except Exception as err:  # noqa: BLE001 - always release the rest
                entry.state, entry.error = "failed", str(err)
                failures.append((entry.writer.qualified_name, str(err)))
            if entry.writer.stage is Stage.FILESYSTEMS:
                cycle.released = time.monotonic()
            self._disarm_if_only_scripts(cycle)
        cycle.unblocked = time.monotonic()  # every lock is released: clients run again
        self._stop_ceiling()  # what follows holds nothing a client waits for
        if step == "thaw":
            await self._finish_steps(cycle, op, failures)
        self._finish(cycle, outcome if not failures else f"{outcome} with errors")
        report = cycle.as_dict()
        if failures:
            raise WriterError(
                failures[0][0],
                f"{step} finished with errors: " + "; ".join(text for _, text in failures),
                report=report,
            )
        return report

    async def _finish_steps(
        self, cycle: Cycle, op: Operation, failures: list[tuple[str, str]]
    ) -> None:
        """After every lock is released: pg_backup_stop, the concurrent scripts' thaw."""
        todo = [
            e
            for e in reversed(cycle.entries)
            if e.state == "thawed" and _has_step(e.writer, "finish")
        ]
        if todo:
            await asyncio.sleep(DRAIN_SECONDS)
        for entry in todo:
            try:
                await self._call(entry, "finish", op, THAW_STEP_SECONDS)
            except Exception as err:  # noqa: BLE001 - always finish the rest
                entry.state, entry.error = "failed", str(err)
                failures.append((entry.writer.qualified_name, str(err)))
        cycle.finished = time.monotonic()

    # -- the ceiling -----------------------------------------------------------------------
    def _start_ceiling(self, at: float) -> None:
        self._ceiling_at = at
        self.hooks.arm(at)
        self._timer = threading.Timer(max(0.0, at - time.monotonic()), self._ceiling_fire)
        self._timer.daemon = True
        self._timer.start()

    def _stop_ceiling(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._ceiling_at = None, None

    def _ceiling_fire(self) -> None:
        """Runs in the timer thread: release everything, even if the event loop is stuck.

        The session's lock is held only to decide and to record, never while a writer
        releases, so ``ping`` and ``status`` answer throughout. Filesystems and database
        locks go first (reverse order); scripts, whose thaw may take its whole timeout, last.
        A thaw that already arrived keeps the snapshot consistent: only its release was late.
        """
        with self._mu:
            cycle = self.cycle
            if cycle is None or self.state is State.IDLE:
                return
            if cycle.thaw_arrived is None:
                cycle.ceiling_hit, cycle.outcome = True, "ceiling"
            else:
                cycle.released_late = True
                cycle.notes.append(
                    f"the release ran past the {cycle.ceiling:g} s ceiling; the ceiling released "
                    "what was still held (the thaw came in time: the snapshot is consistent)"
                )
            held = [e for e in reversed(cycle.entries) if e.state in HELD]
            self._ceiling_running = True
            if self.state is State.FROZEN:  # no command is running: the cycle ends here
                self._set(State.RELEASING)
        logger.warning(
            "ceiling of %g s reached for '%s': releasing %s",
            cycle.ceiling,
            cycle.label,
            ", ".join(e.writer.qualified_name for e in held) or "nothing",
        )
        for entry in held:
            self._emergency_release(entry)
            if entry.writer.stage is Stage.FILESYSTEMS:
                cycle.released = cycle.released or time.monotonic()
            self._disarm_if_only_scripts(cycle)
        with self._mu:
            now = time.monotonic()
            cycle.released = cycle.released or now
            cycle.unblocked = now  # the last release is this thread's, whoever began it
            for entry in cycle.entries:
                entry.artifacts = safe_artifacts(entry.writer)
            self._ceiling_running = False
            if self.state is State.RELEASING:
                self._set(State.IDLE)
        self.hooks.disarm()
        self.hooks.frozen_logging(False)

    def _emergency_release(self, entry: Entry) -> None:
        """One writer's emergency release, in the ceiling thread, without the session lock."""
        held = entry.writer.held_filesystems()
        start = entry.at["emergency"] = time.monotonic()
        try:
            entry.writer.emergency_release()
        except Exception as err:  # noqa: BLE001 - the interface says never; keep releasing
            logger.error("%s: emergency release failed: %r", entry.writer.qualified_name, err)
        entry.ms["emergency"] = (time.monotonic() - start) * 1000
        for path in held:
            if path not in entry.writer.held_filesystems():
                self.hooks.hold(path, False)
        with self._mu:
            if entry.state != "failed":
                entry.state = "released"
            entry.messages.append("released by the ceiling")

    # -- queries ---------------------------------------------------------------------------
    def status(self) -> Status:
        with self._mu:
            left = None
            if self._ceiling_at is not None and self.state is not State.IDLE:
                left = round(max(0.0, self._ceiling_at - time.monotonic()), 3)
            return {
                "state": self.state.value,
                "label": self.cycle.label if self.cycle else None,
                "ceiling_seconds": self.ceiling,
                "seconds_left": left,
                "last_report": self.cycle.as_dict() if self.cycle else None,
            }

    def writers(self) -> list[dict[str, Any]]:
        writers, notes = self.factory(None)
        last = {e.writer.qualified_name: e for e in self.cycle.entries} if self.cycle else {}
        out = []
        for w in sorted(writers, key=lambda w: int(w.stage)):
            entry = last.get(w.qualified_name)
            out.append(
                {
                    "name": w.qualified_name,
                    "kind": w.kind,
                    "stage": int(w.stage),
                    "state": entry.state if entry else "stable",
                    "last_error": entry.error if entry else None,
                    **w.describe(),
                }
            )
        return out + [{"name": "note", "kind": "note", "note": n} for n in notes]

    async def shutdown(self) -> None:
        """Thaw whatever is held (SIGTERM while frozen)."""
        if self.state is not State.IDLE:
            try:
                await self.abort()
            except QuiesceError as err:
                logger.error("shutdown: %s", err)


def _has_step(writer: Writer, step: str) -> bool:
    """Whether the writer has its own ``prepare``/``finish`` (the base class's does nothing:
    not calling it saves a thread hop)."""
    return getattr(type(writer), step) is not getattr(Writer, step)
