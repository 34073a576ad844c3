"""The protocol's errors (in the tree rooted in common/errors.py).

ProtocolError     2  a line that is not a valid request or reply; ``error_class`` says
                     which: BadRequest, CommandNotFound, LineTooLong
EndpointError     2  ENDPOINT is not unix:PATH or vsock:CID:PORT
Unreachable       7  no connection, or the connection was lost mid-call (the agent, or
 │                   the control socket of a served disk)
 └── NoReply      7  no reply within the bound
Garbage           8  the reply is not this protocol
Refused           9  the other end answered with an error: ``error_class``, ``desc``,
                     ``data`` (the cycle's ``report`` when the agent sent one)
"""

from __future__ import annotations

from typing import Any

from agent.protocol.records import Report
from common.errors import QuiesceError

# error classes (the ``class`` field); stable, scripts may match on them
BAD_REQUEST = "BadRequest"  # not JSON, not an object, missing/invalid fields
UNKNOWN_COMMAND = "CommandNotFound"
LINE_TOO_LONG = "LineTooLong"
STATE_ERROR = "StateError"  # e.g. freeze while frozen, thaw while idle
NOT_CONSISTENT = "NotConsistent"  # the ceiling thawed before the thaw came
HOST_GONE = "HostGone"  # a bound freeze's host went away before it was done: rolled back
WRITER_FAILED = "WriterFailed"
INTERNAL = "InternalError"


class ProtocolError(QuiesceError):
    """A line that is not a valid request or reply; ``error_class`` says which kind."""

    code = BAD_REQUEST

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


class EndpointError(QuiesceError):
    code = "EndpointError"


class Unreachable(QuiesceError):
    code = "Unreachable"
    exit_code = 7


class NoReply(Unreachable):
    code = "NoReply"


class Garbage(QuiesceError):
    code = "Garbage"
    exit_code = 8


class Refused(QuiesceError):
    """The other end answered with an error reply."""

    code = "Refused"
    exit_code = 9

    def __init__(
        self, command: str, error_class: str, desc: str, data: dict[str, Any], peer: str
    ) -> None:
        super().__init__(f"{peer} refused {command!r}: {error_class}: {desc}")
        self.command, self.error_class, self.desc, self.data = command, error_class, desc, data

    @property
    def report(self) -> Report | None:
        report = self.data.get("report")
        return report if isinstance(report, dict) else None  # type: ignore[return-value]
