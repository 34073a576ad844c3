"""One quiesced snapshot: ping -> freeze -> flush and switch to a new delta -> thaw -> record.

The snapshot is consistent at the level the agent reports (``application``, ``filesystem``)
only when the thaw confirms that everything was still held: a ``thaw`` that comes back
``NotConsistent`` (the ceiling released first), an agent that died or stopped answering after
the freeze, all leave a snapshot that is no better than ``crash``. Policy:

- ``required`` (default): a quiesce that fails before the switch takes no snapshot; one that
  is not confirmed afterwards deletes the snapshot again. Either way ``QuiesceFailed`` and
  nothing is left behind (see ``NotConfirmed`` for the one case where a server refuses).
- ``preferred``: the same failures give a ``crash`` snapshot, with the reason in its record
  and in ``Outcome.warnings`` for the CLI to print loudly.

Time: one monotonic ``Timeline`` per cycle. The freeze budget asked of the agent leaves room
before the ceiling for the switch and the thaw; the switch is not attempted when less than
``SWITCH_RESERVE`` remains before the earliest moment the ceiling could fire (the ceiling
starts at the agent's first lock, which is after we sent the freeze). The thaw is sent the
moment the cut is recorded (the target's create returned), with nothing in between: no
status call, no record to write, no fsync that can wait; the record shows the gap
(``cut_to_thaw_ms``).

The agent holds the freeze bound to our connection (DESIGN.md, freeze cycle step 7): if this
process dies, the agent undoes it at once. Thaw and abort go on that same connection, also
on Ctrl-C, a freeze that timed out or a failed switch: a QEMU chardev serves one host
connection at a time, so a second connection would wait until the first closed. An endpoint
``qemu-ga:unix:PATH`` speaks to a guest's qemu-ga instead (host/snapshots/qga.py), with the
same waits, modes and record.

Errors (in the tree rooted in common/errors.py)::

    QuiesceError
     └── QuiesceFailed   exit 20: the quiesce failed in required mode; no snapshot was left
          └── NotConfirmed  exit 21: the thaw was not confirmed and the snapshot could not be
                            deleted (a server refused); it is recorded as ``crash``
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agent import protocol
from agent.protocol import (
    Consistency,
    Endpoint,
    Refused,
    Report,
    SnapshotRecord,
    Timings,
    ceiling_of,
)
from common.errors import QuiesceError
from host.snapshots.qga import QgaClient, is_qga
from host.snapshots.target import Target

logger = logging.getLogger(__name__)

MODES = ("required", "preferred")
SWITCH_RESERVE = 0.5  # seconds that must remain before the ceiling to attempt the switch
ABORT_TIMEOUT = 5.0


class QuiesceFailed(QuiesceError):
    code = "QuiesceFailed"
    exit_code = 20

    def __init__(self, message: str, report: Report | None = None) -> None:
        super().__init__(message)
        self.report = report


class NotConfirmed(QuiesceFailed):
    code = "NotConfirmed"
    exit_code = 21


class Timeline:
    """Named moments of one cycle, in ms since the first, on the monotonic clock."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.events: dict[str, float] = {}

    def mark(self, event: str) -> float:
        now = time.monotonic()
        self.events[event] = now
        return now

    def ms(self, a: str, b: str) -> float | None:
        if a in self.events and b in self.events:
            return round((self.events[b] - self.events[a]) * 1000, 1)
        return None

    def since(self, event: str) -> float:
        return time.monotonic() - self.events[event]

    def as_list(self) -> list[dict[str, Any]]:
        return [
            {"event": k, "t_ms": round((v - self.t0) * 1000, 1)}
            for k, v in sorted(self.events.items(), key=lambda kv: kv[1])
        ]


@dataclass
class Faults:
    """Test seams: called at two points of the cycle (the fault tests kill or stall here)."""

    def after_freeze(self) -> None:
        """The agent reported everything frozen; the switch comes next."""

    def before_thaw(self) -> None:
        """The switch is done; the thaw comes next."""


@dataclass
class Outcome:
    """What one cycle did, as the CLI shows it and the snapshot records it."""

    name: str
    mode: str
    consistency: str = Consistency.CRASH
    confirmed: bool = False
    snapshot: SnapshotRecord | None = None
    agent: Report | None = None  # the agent's last report
    warnings: list[str] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)
    moments: dict[str, float] = field(default_factory=dict)  # event -> time.monotonic()

    def shown(self) -> dict[str, Any]:
        """The snapshot's whole record as it stands now, for ``snapshot show`` style output."""
        shown: dict[str, Any] = dict(self.snapshot or {})
        shown.update(self.record())
        return shown

    def record(self) -> dict[str, Any]:
        """The fields the snapshot keeps: consistency, report, artifacts."""
        return {
            "consistency": self.consistency,
            "report": {"agent": self.agent, "host": self.host},
            "artifacts": artifacts_of(self.agent),
        }


def artifacts_of(report: Report | None) -> dict[str, Any]:
    """{writer name: its artifacts} for every writer that has some."""
    writers = report["writers"] if report is not None else []
    return {w["name"]: w["artifacts"] for w in writers if w.get("artifacts")}


def freeze_budget(ceiling: float) -> float:
    """The prepare + freeze budget to ask for: what leaves room for switch and thaw."""
    reserve = min(10.0, max(1.0, ceiling / 4))
    return max(0.5, ceiling - reserve)


class Cycle:
    """Runs one quiesced snapshot against a target. ``run()`` returns an Outcome."""

    def __init__(
        self,
        target: Target,
        name: str,
        endpoint: Endpoint | str,
        *,
        description: str = "",
        mode: str = "required",
        faults: Faults | None = None,
        mountpoints: list[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise QuiesceError(f"--quiesce-mode must be one of {', '.join(MODES)}")
        self.target = target
        self.name = name
        self.description = description
        self.client: protocol.Client | QgaClient = (
            QgaClient(str(endpoint), mountpoints=mountpoints)
            if is_qga(endpoint)
            else protocol.Client(endpoint)
        )
        self.faults = faults or Faults()
        self.tl = Timeline()
        self.out = Outcome(name, mode, moments=self.tl.events)
        self.ceiling = 60.0

    def run(self) -> Outcome:
        """Raises QuiesceFailed (required mode), DiskError/ServeError (the switch failed)."""
        try:
            frozen = self._freeze()
            if frozen is None:
                return self._crash_snapshot()
            switched = self._switch(frozen)
            self._thaw()  # at once: clients are waiting
            self.out.snapshot = switched.get("snapshot")
            self.switch_detail = {k: v for k, v in switched.items() if k != "snapshot"}
            return self._finish()
        except KeyboardInterrupt:
            self._interrupted()
            raise
        finally:
            self.client.close()

    def _interrupted(self) -> None:
        """Ctrl-C mid-cycle: undo the freeze and, in required mode, the snapshot."""
        ev = self.tl.events
        if "freeze_sent" in ev and "frozen" not in ev and isinstance(self.client, protocol.Client):
            # the freeze has not answered, and the agent answers in order: an abort would
            # wait behind it. The freeze is bound to this connection: closing it makes the
            # agent roll back before its next lock
            self.tl.mark("abort_sent")
            self.client.close()
        elif "freeze_sent" in ev and "thawed" not in ev and "abort_sent" not in ev:
            self._abort_quietly()
        if "switch_end" in ev and not self.out.confirmed and self.out.mode == "required":
            try:
                self.target.delete(self.name)
            except Exception as err:  # noqa: BLE001 - interrupted; say what is left
                logger.error("snapshot %r was left behind, recorded as crash: %s", self.name, err)

    # -- steps -----------------------------------------------------------------------------
    def _freeze(self) -> Report | None:
        """The freeze report, or None when the quiesce failed (preferred mode)."""
        try:
            self.tl.mark("ping")
            self.client.connect()
            self.client.ping()
            self.ceiling = ceiling_of(self.client.status())
        except QuiesceError as err:
            self._failed(f"{self._peer()} at {self.client.endpoint} is unreachable: {err}")
            return None
        self.tl.mark("freeze_sent")
        try:
            frozen = self.client.freeze(self.name, freeze_budget(self.ceiling))
        except Refused as err:
            if err.error_class == protocol.STATE_ERROR:
                self._failed(f"{self._peer()} is busy: {err.desc}")
                return None
            self._failed(f"the freeze failed and was rolled back: {err.desc}", err.report)
            return None
        except QuiesceError as err:
            self._abort_quietly()
            self._failed(f"the freeze did not complete: {err}")
            return None
        self.tl.mark("frozen")
        self.out.agent = frozen
        self.faults.after_freeze()
        left = self.ceiling - self.tl.since("freeze_sent")
        if left < SWITCH_RESERVE:
            self._abort_quietly()
            self._failed(
                f"the freeze took {self.tl.since('freeze_sent'):.1f} s of the "
                f"{self.ceiling:g} s ceiling; too little was left to switch"
            )
            return None
        return frozen

    def _switch(self, frozen: Report) -> dict[str, Any]:
        """Flush and switch to a new delta while everything is held (recorded as crash until
        the thaw confirms the hold); the target's reply, looked at after the thaw."""
        left = self.ceiling - self.tl.since("freeze_sent")
        self.out.host = self._host_section(pending=True)
        self.tl.mark("switch_start")
        try:
            result = self.target.create(
                self.name,
                self.description,
                "crash",
                {"agent": frozen, "host": self.out.host},
                artifacts_of(frozen),
                timeout=max(1.0, left),
            )
        except BaseException:
            self.tl.mark("switch_failed")
            self._abort_quietly()
            raise
        self.tl.mark("switch_end")
        return result

    def _thaw(self) -> None:
        self.faults.before_thaw()
        self.tl.mark("thaw_sent")
        try:
            self.out.agent = self.client.thaw(max(self.ceiling, 30.0))
            self.out.confirmed = True
        except Refused as err:
            self.out.agent = err.report or self.out.agent
            if (
                err.error_class == protocol.WRITER_FAILED
                and err.report is not None
                and not err.report.get("ceiling_hit")
            ):
                # the hold was intact through the switch (the agent says NotConsistent
                # otherwise); a writer's release failed, and its level no longer counts
                self.out.confirmed = True
                self.out.warnings.append(f"the thaw finished with errors: {err.desc}")
            else:
                self.unconfirmed = f"the agent answered the thaw with {err.error_class}: {err.desc}"
        except QuiesceError as err:
            self.unconfirmed = f"the thaw was not confirmed: {err}"
        self.tl.mark("thawed")
        if isinstance(self.client, QgaClient):
            self.out.warnings += self.client.warnings

    def _finish(self) -> Outcome:
        out = self.out
        if out.confirmed:
            out.consistency = out.agent["consistency"] if out.agent else Consistency.CRASH
            out.host = self._host_section()
            self.target.update(self.name, out.record())
            return out
        out.consistency = Consistency.CRASH
        out.warnings.append(f"snapshot {self.name!r} is NOT quiesced: {self.unconfirmed}")
        out.host = self._host_section(fallback=self.unconfirmed)
        if out.mode == "required":
            refused = self.target.delete(self.name)
            if refused is None:
                raise QuiesceFailed(
                    f"{self.unconfirmed}; the snapshot was deleted again "
                    "(--quiesce-mode required); nothing was left behind",
                    out.agent,
                )
            self.target.update(self.name, out.record())
            raise NotConfirmed(
                f"{self.unconfirmed}; snapshot {self.name!r} could not be "
                f"deleted ({refused}) and is recorded as crash-consistent; "
                "delete it once the disk is no longer served",
                out.agent,
            )
        self.target.update(self.name, out.record())
        return out

    # -- failure paths -----------------------------------------------------------------------
    def _failed(self, reason: str, report: Report | None = None) -> None:
        """Required: raise. Preferred: note the reason; a crash snapshot follows."""
        self.tl.mark("quiesce_failed")
        self.out.agent = report or self.out.agent
        if self.out.mode == "required":
            raise QuiesceFailed(
                f"{reason}; no snapshot was taken (--quiesce-mode required)", self.out.agent
            )
        self.out.warnings.append(
            f"QUIESCE FAILED, falling back to a crash-consistent snapshot: {reason}"
        )
        self.fallback = reason

    def _crash_snapshot(self) -> Outcome:
        self.out.host = self._host_section(fallback=self.fallback)
        self.tl.mark("switch_start")
        result = self.target.create(
            self.name, self.description, "crash", self.out.record()["report"], {}, timeout=30.0
        )
        self.tl.mark("switch_end")
        self.out.snapshot = result.get("snapshot")
        self.switch_detail = {k: v for k, v in result.items() if k != "snapshot"}
        self.out.host = self._host_section(fallback=self.fallback)
        self.target.update(self.name, self.out.record())
        return self.out

    def _abort_quietly(self) -> None:
        """freezeFail on the connection that froze, best effort and bounded. A reply still
        owed on it (a freeze that timed out) is skipped by its id; a connection that is lost
        took the bound freeze with it; the agent's ceiling covers the rest."""
        self.tl.mark("abort_sent")
        try:
            self.out.agent = self.client.abort(ABORT_TIMEOUT)
        except QuiesceError as err:
            logger.info("abort: %s (the agent's ceiling releases whatever is held)", err)

    def _peer(self) -> str:
        return "qemu-ga" if isinstance(self.client, QgaClient) else "the agent"

    # -- the record ------------------------------------------------------------------------
    def _host_section(self, pending: bool = False, fallback: str | None = None) -> dict[str, Any]:
        tl, agent = self.tl, self.out.agent
        timings: Timings | dict[str, None] = agent["timings"] if agent else {}
        split = {
            "prepare_ms": timings.get("prepare_ms"),
            "lock_ms": timings.get("freeze_ms"),
            "switch_ms": tl.ms("switch_start", "switch_end"),
            "release_ms": tl.ms("thaw_sent", "thawed"),
        }
        return {
            "endpoint": str(self.client.endpoint),
            "mode": self.out.mode,
            "state": "awaiting thaw" if pending else "done",
            "confirmed": self.out.confirmed,
            "fallback": fallback,
            "ceiling_seconds": self.ceiling,
            "window_ms": tl.ms("freeze_sent", "thawed"),  # freeze start -> thaw end
            "split": split,
            "agent_blocked_ms": timings.get("blocked_ms"),  # first lock -> last lock released
            "agent_held_ms": timings.get("held_ms"),
            "cut_to_thaw_ms": tl.ms("switch_end", "thaw_sent"),
            "switch": getattr(self, "switch_detail", None),
            "events": tl.as_list(),
            "warnings": list(self.out.warnings),
        }


def take(
    target: Target,
    name: str,
    endpoint: Endpoint | str,
    *,
    description: str = "",
    mode: str = "required",
    faults: Faults | None = None,
    mountpoints: list[str] | None = None,
) -> Outcome:
    """Run one quiesced snapshot cycle (see the module docstring). ``mountpoints``: with a
    qemu-ga endpoint, freeze only these (guest-fsfreeze-freeze-list), not every filesystem."""
    cycle = Cycle(
        target,
        name,
        endpoint,
        description=description,
        mode=mode,
        faults=faults,
        mountpoints=mountpoints,
    )
    return cycle.run()
