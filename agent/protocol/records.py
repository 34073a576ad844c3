"""The records the protocol carries: the cycle's report, the status, the snapshot record.

TypedDicts, so that both sides read them with the same field names and mypy checks it; the
JSON on the wire is exactly these dicts. ``Consistency`` is the one list of levels.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NotRequired, TypedDict


class Consistency(StrEnum):
    """How much of the guest a snapshot holds still, best first."""

    APPLICATION = "application"  # every writer held: databases, scripts and filesystems
    FILESYSTEM = "filesystem"  # only filesystems were frozen
    CRASH = "crash"  # nothing held: as if the power had been cut


class Timings(TypedDict):
    """The cycle's spans on the agent's monotonic clock, in ms (None: it did not happen)."""

    prepare_ms: float | None  # freeze arrived -> first lock (nothing blocked yet)
    freeze_ms: float | None  # first lock -> every writer holds
    held_ms: float | None  # first lock -> last filesystem released
    blocked_ms: float | None  # first lock -> last lock released: how long clients may wait
    finish_ms: float | None  # last lock released -> the work after it done (pg_backup_stop)
    thaw_at_ms: float | None  # freeze arrived -> thaw arrived


class WriterEntry(TypedDict):
    """One writer in one cycle, with ``<step>_ms`` for each step it ran (``emergency``: the
    ceiling released it) and ``at_ms``, when each step started (ms after the freeze
    arrived)."""

    name: str
    kind: str
    state: str
    messages: list[str]
    error: str | None
    artifacts: dict[str, Any]
    prepare_ms: NotRequired[float]
    freeze_ms: NotRequired[float]
    thaw_ms: NotRequired[float]
    finish_ms: NotRequired[float]
    abort_ms: NotRequired[float]
    emergency_ms: NotRequired[float]
    at_ms: NotRequired[dict[str, float]]
    blocked_share_ms: NotRequired[float]  # its own steps inside the blocked window


class Report(TypedDict):
    """What a freeze, thaw or abort reply carries (and an error's ``data.report``)."""

    label: str
    outcome: str
    consistency: str  # a Consistency value
    started: str
    ceiling_seconds: float
    ceiling_hit: bool  # the ceiling released before the thaw came: NOT consistent
    released_late: bool  # the thaw came in time but its release ran past the ceiling
    timings: Timings
    writers: list[WriterEntry]
    notes: list[str]
    bound: NotRequired[bool]  # held only while the host connection that asked for it lived


class Status(TypedDict):
    state: str
    label: str | None
    ceiling_seconds: float
    seconds_left: float | None
    last_report: Report | None


RECORD_FIELDS = ("description", "consistency", "report", "artifacts")


class SnapshotRecord(TypedDict):
    """A snapshot as the engine keeps it; the quiesce's part is ``RECORD_FIELDS``."""

    name: str
    layer: str
    created: str
    description: str
    consistency: str  # a Consistency value
    report: dict[str, Any]  # {"agent": Report | None, "host": {...}}
    artifacts: dict[str, Any]  # writer name -> its artifacts
    parent: NotRequired[str | None]
