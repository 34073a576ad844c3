"""The quiesce cycle's client for a guest that runs qemu-ga: ``--quiesce qemu-ga:unix:PATH``.

PATH is the host end (a QEMU socket chardev) of the guest's ``org.qemu.guest_agent.0`` port.
``QgaClient`` has the calls the cycle (host/snapshots/cycle.py) makes of our own agent, so
the cycle's bounded waits, modes and record are the same; it speaks qemu-ga's protocol:

- connect: ``guest-sync-delimited`` with a random id (stale replies and a half-sent request
  of an earlier client are dropped), then ``guest-ping``;
- status: ``guest-fsfreeze-status``; a guest already frozen (another backup tool, a freeze
  nobody thawed) is refused politely as busy: we never freeze over someone else's freeze.
  The bridge's record (below) is emptied here, before anything is frozen;
- freeze: ``guest-fsfreeze-freeze`` (or ``-freeze-list`` with ``mountpoints``), bounded by
  the budget like our agent's freeze; its reply is only a count of filesystems;
- thaw / abort: ``guest-fsfreeze-thaw`` on the same connection; then, with nothing held any
  more, the bridge's record is read.

What the snapshot records: ``filesystem`` (qemu-ga froze the filesystems and the thaw found
them still frozen), or ``application`` when the guest's fsfreeze hook is our bridge and its
record says the agent held the databases through the cut. qemu-ga's replies say nothing of
the hook, so the bridge tells through a file: it writes each reply of the agent it drove
(``quiesce-agent freeze|thaw --record FILE``) to ``BRIDGE_RECORD`` on /run (a tmpfs, never
frozen). The host empties that file with ``guest-file-open`` mode ``w`` before the freeze and
reads it with ``guest-file-read`` after the thaw, both outside the frozen window (qemu-ga
refuses every guest-file call while frozen, and a file read is the only way that runs no
program in the guest). A record that is missing, still empty, not the thaw's, or that says
the thaw was not consistent leaves the snapshot ``filesystem`` with a warning; a qemu-ga
that blocks guest-file-* (RHEL's default) too. No ceiling guards qemu-ga's own freeze in
the guest: if this host dies mid-freeze the filesystems stay frozen until someone sends
``guest-fsfreeze-thaw`` (our agent's bound freeze has no such gap).

Raises the protocol's Unreachable, NoReply, Garbage, Refused (``StateError`` when frozen).
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

from agent import protocol
from agent.protocol import Consistency, Report, Status, WriterEntry
from common.errors import QuiesceError

PREFIX = "qemu-ga:"
BRIDGE_RECORD = "/run/quiesce-agent/qemu-ga-bridge.json"  # the bridge's QUIESCE_BRIDGE_RECORD
CEILING = protocol.MAX_CEILING  # qemu-ga has none: the host holds itself to ours
HINTS = {
    **protocol.AGENT_HINTS,
    "unix": "is this the host end of the guest's org.qemu.guest_agent.0 port (a QEMU socket "
    "chardev), and is the guest running?",
    "lost": "did qemu-ga stop, or the guest reboot? (systemctl status qemu-guest-agent)",
    "peer": "qemu-ga",
    "garbage": "is qemu-ga running in the guest, and is this its port?",
}
RECORD_MAX = 1 << 20


def is_qga(endpoint: object) -> bool:
    return isinstance(endpoint, str) and endpoint.startswith(PREFIX)


class QgaClient:
    """One connection to a guest's qemu-ga, with the calls the quiesce cycle makes."""

    def __init__(
        self, endpoint: str, *, mountpoints: list[str] | None = None, record: str = BRIDGE_RECORD
    ) -> None:
        inner = endpoint[len(PREFIX) :] if endpoint.startswith(PREFIX) else endpoint
        if not inner.startswith("unix:"):
            raise protocol.EndpointError(
                f"{endpoint!r}: a qemu-ga endpoint is qemu-ga:unix:PATH, PATH the host end of "
                "the guest's org.qemu.guest_agent.0 port"
            )
        self.client = protocol.Client(inner, hints=HINTS)
        self.endpoint = f"{PREFIX}{self.client.endpoint}"
        self.mountpoints = mountpoints
        self.record_path = record
        self.warnings: list[str] = []
        self._frozen_before: str | None = None
        self._record_ready: str | None = None  # None: emptied; else why it cannot be used
        self._report: Report | None = None
        self._synced = False

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> QgaClient:
        self.client.connect()
        self.client.sync_delimited()
        self._synced = True
        return self

    def close(self) -> None:
        self.client.close()
        self._synced = False

    def _call(self, command: str, arguments: dict[str, Any] | None, timeout: float) -> Any:
        if not self._synced:
            self.connect()
        return self.client.call(command, arguments, timeout)

    # -- the cycle's calls -----------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        self._call("guest-ping", None, protocol.CONNECT_TIMEOUT)
        return {"pong": True}

    def status(self) -> Status:
        """qemu-ga's freeze state; the bridge's record emptied while nothing is frozen."""
        state = str(self._call("guest-fsfreeze-status", None, protocol.CONNECT_TIMEOUT))
        self._frozen_before = state if state != "thawed" else None
        if self._frozen_before is None:
            self._record_ready = self._empty_record()
        return {
            "state": state,
            "label": None,
            "ceiling_seconds": CEILING,
            "seconds_left": None,
            "last_report": None,
        }

    def freeze(self, label: str, budget: float, margin: float = 2.0) -> Report:
        """Raises Refused (StateError) when the guest was frozen already, or qemu-ga's error
        (a failing fsfreeze hook: nothing is left frozen), NoReply after ``budget + margin``."""
        if self._frozen_before is not None:
            raise protocol.Refused(
                "guest-fsfreeze-freeze",
                protocol.STATE_ERROR,
                f"the guest's filesystems are already {self._frozen_before} (another backup "
                "tool, or a freeze nobody thawed); not freezing over it. Check with "
                "guest-fsfreeze-status; guest-fsfreeze-thaw once nobody else is snapshotting",
                {},
                "qemu-ga",
            )
        t0 = time.monotonic()
        if self.mountpoints is None:
            count = self._call("guest-fsfreeze-freeze", None, budget + margin)
        else:
            args = {"mountpoints": self.mountpoints}
            count = self._call("guest-fsfreeze-freeze-list", args, budget + margin)
        took = (time.monotonic() - t0) * 1000
        if int(count) == 0:  # nothing frozen: qemu-ga ran the freeze hook but will not thaw it
            try:
                self._call("guest-fsfreeze-thaw", None, protocol.CONNECT_TIMEOUT)  # the hook's
            except QuiesceError:
                pass
            where = f" of {', '.join(self.mountpoints)}" if self.mountpoints else ""
            raise protocol.Refused(
                "guest-fsfreeze-freeze",
                protocol.WRITER_FAILED,
                f"qemu-ga froze no filesystem{where} (qemu-ga ignores a mount point it does not "
                "know; check --quiesce-mount against the guest's mount table)",
                {},
                "qemu-ga",
            )
        self._report = _report(label, int(count), took)
        return self._report

    def thaw(self, timeout: float) -> Report:
        """The final report: ``filesystem``, or ``application`` as the bridge's record says.

        qemu-ga thaws first and then runs the hook: an error that names the hook (the
        bridge's thaw failed: the databases' hold was not confirmed) still leaves the
        filesystems' freeze intact through the cut, so it gives ``filesystem`` and a warning.
        Raises NoReply, Unreachable, Refused (any other error, or the guest was not frozen).
        """
        report = self._report or _report("?", 0, 0.0)
        t0 = time.monotonic()
        try:
            count = int(self._call("guest-fsfreeze-thaw", None, timeout))
        except protocol.Refused as err:
            if "hook" not in err.desc:
                raise
            count = -1
            self.warnings.append(
                f"qemu-ga thawed, but its fsfreeze hook failed ({err.desc}): the databases' "
                "hold is not confirmed; the snapshot is filesystem-consistent only"
            )
        fs = report["writers"][0]
        fs["thaw_ms"] = round((time.monotonic() - t0) * 1000, 1)
        fs["state"] = "thawed"
        if count == 0:
            raise protocol.Refused(
                "guest-fsfreeze-thaw",
                protocol.NOT_CONSISTENT,
                "qemu-ga thawed no filesystem: nothing was frozen any more at the thaw (qemu-ga "
                "restarted, or someone thawed first); the snapshot is NOT consistent",
                {"report": report},
                "qemu-ga",
            )
        report["outcome"] = "thawed"
        if count > 0:
            self._apply_bridge(report)
        return report

    def abort(self, timeout: float = protocol.CONNECT_TIMEOUT) -> Report:
        """Thaw without judging the snapshot (qemu-ga has no freezeFail). On a connection
        that is gone, a new one: nothing in qemu-ga is bound to the old."""
        try:
            self._call("guest-fsfreeze-thaw", None, timeout)
        except protocol.Unreachable:
            self.close()
            self._call("guest-fsfreeze-thaw", None, timeout)
        report = self._report or _report("?", 0, 0.0)
        report["outcome"] = "aborted"
        report["consistency"] = Consistency.CRASH
        return report

    # -- the bridge's record ---------------------------------------------------------------
    def _empty_record(self) -> str | None:
        """Empty the record before the freeze; why it cannot be used, or None."""
        try:
            handle = self._call(
                "guest-file-open", {"path": self.record_path, "mode": "w"}, protocol.CONNECT_TIMEOUT
            )
            self._call("guest-file-close", {"handle": handle}, protocol.CONNECT_TIMEOUT)
        except protocol.Refused as err:
            return f"the bridge's record {self.record_path} could not be prepared ({err.desc})"
        return None

    def _read_record(self) -> dict[str, Any]:
        """The record as the bridge left it. Raises QuiesceError saying why it is unusable."""
        if self._record_ready is not None:
            raise QuiesceError(self._record_ready)
        try:
            handle = self._call(
                "guest-file-open", {"path": self.record_path, "mode": "r"}, protocol.CONNECT_TIMEOUT
            )
            data = b""
            try:
                while len(data) < RECORD_MAX:
                    part = self._call(
                        "guest-file-read",
                        {"handle": handle, "count": 65536},
                        protocol.CONNECT_TIMEOUT,
                    )
                    data += base64.b64decode(part.get("buf-b64", ""))
                    if part.get("eof") or not part.get("count"):
                        break
            finally:
                self._call("guest-file-close", {"handle": handle}, protocol.CONNECT_TIMEOUT)
        except protocol.Refused as err:
            raise QuiesceError(f"the bridge's record could not be read ({err.desc})") from err
        if not data.strip():
            raise QuiesceError(
                f"{self.record_path} is empty: the guest's fsfreeze hook is not quiesce-agent's "
                "bridge, or the bridge did not run"
            )
        try:
            record = json.loads(data)
        except ValueError as err:
            raise QuiesceError(f"{self.record_path} is not JSON: {err}") from err
        return record if isinstance(record, dict) else {}

    def _apply_bridge(self, report: Report) -> None:
        """``application`` with the agent's writers when the bridge says its thaw held."""
        try:
            record = self._read_record()
        except QuiesceError as err:
            report["notes"].append(f"filesystem-consistent (qemu-ga only): {err}")
            return
        error = record.get("error")
        agent = record.get("return")
        if isinstance(error, dict):
            why = f"{error.get('class')}: {error.get('desc')}"
            self.warnings.append(
                f"the bridge's agent answered {why}; the databases' hold is not confirmed, the "
                "snapshot is filesystem-consistent only (is the bridge in the stock "
                "fsfreeze-hook.d, whose hook ignores failures?)"
            )
            report["notes"].append(f"the bridge's last reply: {why}")
            return
        if not isinstance(agent, dict) or not str(agent.get("outcome", "")).startswith("thawed"):
            report["notes"].append(
                "filesystem-consistent (qemu-ga only): the bridge's record is not a thaw's reply"
            )
            return
        report["writers"] += [
            w  # type: ignore[misc]  # the agent's own WriterEntry, as it sent it
            for w in agent.get("writers", [])
            if isinstance(w, dict)
        ]
        report["notes"] += [f"bridge: {n}" for n in agent.get("notes", [])]
        if agent.get("consistency") == Consistency.APPLICATION:
            report["consistency"] = Consistency.APPLICATION
            report["notes"].append(
                f"application-consistent: the fsfreeze hook is quiesce-agent's bridge, which "
                f"held '{agent.get('label')}' through the cut"
            )


def _report(label: str, count: int, freeze_ms: float) -> Report:
    """Our agent's report shape for what qemu-ga did (it reports only a count)."""
    fs = WriterEntry(
        name="qemu-ga:filesystems",
        kind="filesystems",
        state="frozen",
        messages=[f"guest-fsfreeze-freeze: {count} filesystem(s) frozen"],
        error=None,
        artifacts={},
        freeze_ms=round(freeze_ms, 1),
    )
    return {
        "label": label,
        "outcome": "frozen",
        "consistency": Consistency.FILESYSTEM,
        "started": datetime.now(UTC).isoformat(),
        "ceiling_seconds": CEILING,
        "ceiling_hit": False,
        "released_late": False,
        "timings": {
            "prepare_ms": None,
            "freeze_ms": round(freeze_ms, 1),
            "held_ms": None,
            "blocked_ms": None,
            "finish_ms": None,
            "thaw_at_ms": None,
        },
        "writers": [fs],
        "notes": [],
    }


__all__ = ["BRIDGE_RECORD", "PREFIX", "QgaClient", "is_qga"]
