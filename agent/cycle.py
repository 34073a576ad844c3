"""One freeze cycle as the agent records it: each writer's entry, the times, the report.

The state machine (agent/session.py) fills a ``Cycle`` in as it goes; ``as_dict`` turns it
into the protocol's ``Report`` (agent/protocol/records.py), which every reply carries.
Nothing here blocks or raises.

Times are the agent's monotonic clock. ``blocked_ms`` runs from the first lock that can block
a client to the release of the last one: the figure users feel. Each writer's
``blocked_share_ms`` is the part of it spent in that writer's own steps (its lock and its
release); the rest is the host's switch and the round trips of the freeze reply and the thaw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.protocol import Consistency, Report, WriterEntry
from hooks.base import Writer

WINDOW_STEPS = ("freeze", "thaw", "abort", "emergency")  # the steps inside the blocked window


@dataclass
class Entry:
    """One writer in one cycle, as the report shows it."""

    writer: Writer
    state: str = (
        "pending"  # pending prepared freezing frozen thawing thawed aborted failed released
    )
    ms: dict[str, float] = field(default_factory=dict)  # step -> how long it took
    at: dict[str, float] = field(default_factory=dict)  # step -> when it started (monotonic)
    held_at_thaw: bool = False  # it held when the thaw arrived (what consistency counts)
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, t0: float, in_window: bool) -> WriterEntry:
        """The report's view; ``t0`` is the cycle's start, ``in_window`` whether a lock was
        taken (only then is there a blocked window to have a share of)."""
        entry = WriterEntry(
            name=self.writer.qualified_name,
            kind=self.writer.kind,
            state=self.state,
            messages=self.messages,
            error=self.error,
            artifacts=self.artifacts,
        )
        for step, ms in self.ms.items():  # prepare, freeze, thaw, finish, abort, emergency
            entry[f"{step}_ms"] = round(ms, 1)  # type: ignore[literal-required]
        entry["at_ms"] = {step: round((at - t0) * 1000, 1) for step, at in self.at.items()}
        if in_window:
            entry["blocked_share_ms"] = round(sum(self.ms.get(s, 0.0) for s in WINDOW_STEPS), 1)
        return entry


@dataclass
class Cycle:
    """One freeze cycle: its writers, times and outcome."""

    label: str
    entries: list[Entry]
    ceiling: float
    notes: list[str] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    t0: float = field(default_factory=time.monotonic)
    first_lock: float | None = None  # the first lock that can block a client
    all_frozen: float | None = None
    released: float | None = None  # the last filesystem thawed
    unblocked: float | None = None  # the last lock released: clients run again
    finished: float | None = None  # the work after the release (pg_backup_stop) done
    thaw_arrived: float | None = None  # when the thaw (or abort) came, before the ceiling
    outcome: str = "in progress"
    ceiling_hit: bool = False  # the ceiling fired before the thaw came: not consistent
    released_late: bool = False  # the thaw came in time, its release ran past the ceiling
    disarmed: bool = False  # the dead-man guard was disarmed (nothing it can help with is held)
    bound: bool = False  # held only while the host connection that asked for it lives

    def thaw_came(self) -> None:
        """Record the thaw's arrival: what holds now is what the snapshot holds still."""
        self.thaw_arrived = time.monotonic()
        for entry in self.entries:
            entry.held_at_thaw = entry.state == "frozen"

    def consistency(self) -> Consistency:
        """Decided by what held when the thaw arrived, not by how long the release took; a
        writer whose release failed no longer counts (its hold may have been lost)."""
        if self.ceiling_hit or self.all_frozen is None:
            return Consistency.CRASH
        if self.thaw_arrived is None:
            held = {e.writer.kind for e in self.entries if e.state == "frozen"}
        else:
            held = {e.writer.kind for e in self.entries if e.held_at_thaw and e.state != "failed"}
        if held - {"filesystems"}:
            return Consistency.APPLICATION
        return Consistency.FILESYSTEM if held else Consistency.CRASH

    def as_dict(self) -> Report:
        def ms(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 1) if a is not None and b is not None else None

        return {
            "label": self.label,
            "outcome": self.outcome,
            "consistency": self.consistency(),
            "started": self.started,
            "ceiling_seconds": self.ceiling,
            "ceiling_hit": self.ceiling_hit,
            "released_late": self.released_late,
            "timings": {
                "prepare_ms": ms(self.t0, self.first_lock),
                "freeze_ms": ms(self.first_lock, self.all_frozen),
                "held_ms": ms(self.first_lock, self.released),
                "blocked_ms": ms(self.first_lock, self.unblocked),
                "finish_ms": ms(self.unblocked, self.finished),
                "thaw_at_ms": ms(self.t0, self.thaw_arrived),
            },
            "writers": [e.as_dict(self.t0, self.first_lock is not None) for e in self.entries],
            "notes": self.notes,
            "bound": self.bound,
        }


def safe_artifacts(writer: Writer) -> dict[str, Any]:
    try:
        return writer.artifacts()
    except Exception as err:  # noqa: BLE001 - a report must not fail on artifacts
        return {"error": f"artifacts unavailable: {err}"}
