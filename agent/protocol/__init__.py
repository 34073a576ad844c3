"""The protocol: the wire format, its line framing, the records it carries and the one client.

This package is the one part of agent/ that host/ imports (DESIGN.md "The pieces"). Standard
library only; importing it changes nothing in the importing process. Its parts:

    wire.py     the format: requests, replies, parse_request (with a command set)
    framing.py  LineBuffer, the one framing; recv_line (sockets), read_lines (asyncio)
    records.py  Consistency and the TypedDicts: Report, Status, SnapshotRecord
    client.py   Endpoint, parse_endpoint, Client (every wait bounded, ids matched)
    errors.py   ProtocolError, EndpointError, Unreachable/Timeout/Garbage/Refused

Everything a caller needs is re-exported here: ``from agent import protocol``.
"""

from agent.protocol.client import AGENT_HINTS, Client, Endpoint, ceiling_of, parse_endpoint
from agent.protocol.errors import (
    BAD_REQUEST,
    HOST_GONE,
    INTERNAL,
    LINE_TOO_LONG,
    NOT_CONSISTENT,
    STATE_ERROR,
    UNKNOWN_COMMAND,
    WRITER_FAILED,
    EndpointError,
    Garbage,
    NoReply,
    ProtocolError,
    Refused,
    Unreachable,
)
from agent.protocol.framing import LineBuffer, read_lines, recv_line
from agent.protocol.records import (
    RECORD_FIELDS,
    Consistency,
    Report,
    SnapshotRecord,
    Status,
    Timings,
    WriterEntry,
)
from agent.protocol.wire import (
    COMMANDS,
    CONNECT_TIMEOUT,
    DEFAULT_SOCKET,
    MAX_CEILING,
    MAX_LINE,
    MAX_REPLY,
    Request,
    encode,
    failure,
    parse_reply,
    parse_request,
    request,
    request_id,
    success,
)

__all__ = [
    "AGENT_HINTS",
    "BAD_REQUEST",
    "COMMANDS",
    "HOST_GONE",
    "CONNECT_TIMEOUT",
    "DEFAULT_SOCKET",
    "INTERNAL",
    "LINE_TOO_LONG",
    "MAX_CEILING",
    "MAX_LINE",
    "MAX_REPLY",
    "NOT_CONSISTENT",
    "RECORD_FIELDS",
    "STATE_ERROR",
    "UNKNOWN_COMMAND",
    "WRITER_FAILED",
    "Garbage",
    "Refused",
    "NoReply",
    "Unreachable",
    "Client",
    "Consistency",
    "Endpoint",
    "EndpointError",
    "LineBuffer",
    "ProtocolError",
    "Report",
    "Request",
    "SnapshotRecord",
    "Status",
    "Timings",
    "WriterEntry",
    "ceiling_of",
    "encode",
    "failure",
    "parse_endpoint",
    "parse_reply",
    "parse_request",
    "read_lines",
    "recv_line",
    "request",
    "request_id",
    "success",
]
