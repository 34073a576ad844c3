"""The freeze state machine: prepare -> freeze in order -> (snapshot) -> thaw in reverse.

    IDLE --freeze--> PREPARING --> FREEZING --> FROZEN --thaw--> THAWING --> IDLE
                         |             |           |--abort--> ABORTING --> IDLE
                         +-- failure --+--> rollback (freezeFail, reverse order) --> IDLE
    the ceiling (a thread, not the event loop) releases everything held --> IDLE

Writer calls run in worker threads so ``ping`` and ``status`` answer during a freeze; each
call is bounded by the freeze budget. The ceiling clock starts at the first lock. Every reply
carries a report: each writer, its state, its step timings and its messages.

Raises: StateError (wrong state), WriterError/WriterTimeout (rolled back), NotConsistent.
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
from agent.errors import NotConsistent, StateError
from agent.protocol import Report, Status
from common.deadline import Deadline
from common.errors import QuiesceError
from hooks.base import Operation, Stage, Writer
from hooks.errors import WriterError, WriterTimeout

logger = logging.getLogger(__name__)
THAW_STEP_SECONDS = 30.0  # bound for each writer's thaw (pg_backup_stop waits for archiving)


class State(Enum):
    IDLE = "idle"  # nothing held
    PREPARING = "preparing"  # writers doing slow work, nothing locked yet
    FREEZING = "freezing"  # taking locks in order
    FROZEN = "frozen"  # every writer holds; waiting for thaw or abort
    THAWING = "thawing"  # releasing in reverse order
    ABORTING = "aborting"  # freezeFail rollback in reverse order


class Hooks(Protocol):
    """What the session tells the outside world (guard, marker, log buffer)."""

    def hold(self, path: str, held: bool) -> None: ...
    def arm(self, deadline: float) -> None: ...
    def disarm(self) -> None: ...
    def ensure_guard(self) -> None: ...
    def frozen_logging(self, frozen: bool) -> None: ...


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
        start = time.monotonic()
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
        self, label: str, names: list[str] | None = None, timeout: float | None = None
    ) -> Report:
        async with self._op:
            if self.state is not State.IDLE:
                raise StateError(
                    f"a freeze ({self.cycle.label if self.cycle else '?'}) is "
                    f"already {self.state.value}; thaw or abort it first"
                )
            budget = min(timeout or self.timeout, self.timeout, self.ceiling)
            writers, notes = self.factory(names)
            writers.sort(key=lambda w: int(w.stage))  # stable: scripts keep byte-wise order
            cycle = Cycle(label, [Entry(w) for w in writers], self.ceiling, notes)
            self.cycle = cycle
            self.hooks.ensure_guard()
            deadline = Deadline(budget)
            op = self._operation(cycle, deadline)
            self._set(State.PREPARING)
            try:
                await self._prepare(cycle, op, deadline)
                await self._freeze_all(cycle, op, deadline)
            except QuiesceError as err:
                await self._rollback(cycle, op, "failed")
                err.data["report"] = cycle.as_dict()
                raise
            return cycle.as_dict()

    async def _prepare(self, cycle: Cycle, op: Operation, deadline: Deadline) -> None:
        results = await asyncio.gather(
            *(self._call(e, "prepare", op, deadline.remaining()) for e in cycle.entries),
            return_exceptions=True,
        )
        failed = None
        for entry, result in zip(cycle.entries, results, strict=True):
            if isinstance(result, BaseException):
                entry.state, entry.error = "failed", str(result)
                failed = failed or result
            else:
                entry.state = "prepared"
        if failed is not None:
            if not isinstance(failed, QuiesceError):
                failed = WriterError("prepare", f"unexpected error: {failed!r}")
            raise failed

    async def _freeze_all(self, cycle: Cycle, op: Operation, deadline: Deadline) -> None:
        self._set(State.FREEZING)
        self.hooks.frozen_logging(True)
        cycle.first_lock = time.monotonic()
        self._start_ceiling(cycle.first_lock + self.ceiling)
        for entry in cycle.entries:
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
            self._set(State.IDLE)
        self.hooks.frozen_logging(False)

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
                self.state is State.IDLE
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
            self._set(State.THAWING if step == "thaw" else State.ABORTING)
        op = self._operation(cycle, Deadline(THAW_STEP_SECONDS))
        failures = []
        for entry in reversed(cycle.entries):
            if entry.state != "frozen":
                continue
            try:
                await self._call(entry, step, op, THAW_STEP_SECONDS)
                entry.state = entry_state
            except Exception as err:  # noqa: BLE001 - always release the rest
                entry.state, entry.error = "failed", str(err)
                failures.append(str(err))
            if entry.writer.stage is Stage.FILESYSTEMS:
                cycle.released = time.monotonic()
        self._finish(cycle, outcome if not failures else f"{outcome} with errors")
        report = cycle.as_dict()
        if cycle.ceiling_hit:
            raise NotConsistent(
                f"the ceiling was reached during {step}: the snapshot is NOT consistent",
                report=report,
            )
        if failures:
            raise WriterError(
                failures[0].split(":")[0],
                f"{step} finished with errors: " + "; ".join(failures),
                report=report,
            )
        return report

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
        """Runs in the timer thread: release everything, even if the event loop is stuck."""
        with self._mu:
            cycle = self.cycle
            if cycle is None or self.state is State.IDLE:
                return
            cycle.ceiling_hit, cycle.outcome = True, "ceiling"
            logger.warning(
                "ceiling of %g s reached for '%s': releasing everything", cycle.ceiling, cycle.label
            )
            for entry in reversed(cycle.entries):
                if entry.state in ("frozen", "freezing", "failed"):
                    held = entry.writer.held_filesystems()
                    entry.writer.emergency_release()
                    for path in held:
                        if path not in entry.writer.held_filesystems():
                            self.hooks.hold(path, False)
                    if entry.state != "failed":
                        entry.state = "released"
                    entry.messages.append("released by the ceiling")
            cycle.released = time.monotonic()
            for entry in cycle.entries:
                entry.artifacts = safe_artifacts(entry.writer)
            if self.state is State.FROZEN:
                self._set(State.IDLE)
        self.hooks.disarm()
        self.hooks.frozen_logging(False)

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
