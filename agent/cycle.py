"""One freeze cycle as the agent records it: each writer's entry, the times, the report.

The state machine (agent/session.py) fills a ``Cycle`` in as it goes; ``as_dict`` turns it
into the protocol's ``Report`` (agent/protocol/records.py), which every reply carries.
Nothing here blocks or raises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.protocol import Consistency, Report, WriterEntry
from hooks.base import Writer


@dataclass
class Entry:
    """One writer in one cycle, as the report shows it."""

    writer: Writer
    state: str = "pending"  # pending prepared freezing frozen thawed aborted failed released
    ms: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> WriterEntry:
        entry = WriterEntry(
            name=self.writer.qualified_name,
            kind=self.writer.kind,
            state=self.state,
            messages=self.messages,
            error=self.error,
            artifacts=self.artifacts,
        )
        for step, ms in self.ms.items():  # prepare, freeze, thaw, abort: the steps it ran
            entry[f"{step}_ms"] = round(ms, 1)  # type: ignore[literal-required]
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
    first_lock: float | None = None
    all_frozen: float | None = None
    released: float | None = None
    outcome: str = "in progress"
    ceiling_hit: bool = False

    def consistency(self) -> Consistency:
        held = {e.writer.kind for e in self.entries if e.state in ("frozen", "thawed")}
        if self.ceiling_hit or self.all_frozen is None:
            return Consistency.CRASH
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
            "timings": {
                "prepare_ms": ms(self.t0, self.first_lock),
                "freeze_ms": ms(self.first_lock, self.all_frozen),
                "held_ms": ms(self.first_lock, self.released),
            },
            "writers": [e.as_dict() for e in self.entries],
            "notes": self.notes,
        }


def safe_artifacts(writer: Writer) -> dict[str, Any]:
    try:
        return writer.artifacts()
    except Exception as err:  # noqa: BLE001 - a report must not fail on artifacts
        return {"error": f"artifacts unavailable: {err}"}
