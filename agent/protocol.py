"""The wire format: one JSON object per line, shaped like the QEMU guest agent's.

    request  {"execute": "freeze", "arguments": {...}, "id": 7}
    success  {"return": {...}, "id": 7}
    failure  {"error": {"class": "WriterFailed", "desc": "...", "data": {...}}, "id": 7}

This is the one module that host/ imports from agent/. It has no dependency beyond the
standard library and knows nothing of the daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from common.errors import QuiesceError

MAX_LINE = 64 * 1024  # bytes; a longer request line is refused and the connection closed
COMMANDS = ("ping", "freeze", "thaw", "abort", "status", "writers")
DEFAULT_SOCKET = "/run/quiesce-agent/agent.sock"

# error classes (the ``class`` field); stable, scripts may match on them
BAD_REQUEST = "BadRequest"  # not JSON, not an object, missing/invalid fields
UNKNOWN_COMMAND = "CommandNotFound"
LINE_TOO_LONG = "LineTooLong"
STATE_ERROR = "StateError"  # e.g. freeze while frozen, thaw while idle
NOT_CONSISTENT = "NotConsistent"  # the ceiling thawed before the thaw came
WRITER_FAILED = "WriterFailed"
INTERNAL = "InternalError"


class ProtocolError(QuiesceError):
    """A line that is not a valid request or reply; ``error_class`` says which kind."""

    code = BAD_REQUEST

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


@dataclass
class Request:
    execute: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: Any = None


def encode(obj: dict[str, Any]) -> bytes:
    """One JSON object as one line (compact, UTF-8, newline-terminated)."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def request(execute: str, arguments: dict[str, Any] | None = None, id: Any = None) -> bytes:
    obj: dict[str, Any] = {"execute": execute}
    if arguments:
        obj["arguments"] = arguments
    if id is not None:
        obj["id"] = id
    return encode(obj)


def success(ret: Any, id: Any = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"return": ret}
    if id is not None:
        obj["id"] = id
    return obj


def failure(
    error_class: str, desc: str, data: dict[str, Any] | None = None, id: Any = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"class": error_class, "desc": desc}
    if data:
        err["data"] = data
    obj: dict[str, Any] = {"error": err}
    if id is not None:
        obj["id"] = id
    return obj


def parse_request(line: bytes) -> Request:
    """Decode one request line. Raises ProtocolError with a class a client can act on."""
    if len(line) > MAX_LINE:
        raise ProtocolError(LINE_TOO_LONG, f"request line longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(BAD_REQUEST, f"request is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, "request must be a JSON object")
    execute = obj.get("execute")
    if not isinstance(execute, str):
        raise ProtocolError(BAD_REQUEST, "request needs a string field 'execute'")
    unknown = set(obj) - {"execute", "arguments", "id"}
    if unknown:
        raise ProtocolError(BAD_REQUEST, f"unknown request field(s): {', '.join(sorted(unknown))}")
    arguments = obj.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ProtocolError(BAD_REQUEST, "'arguments' must be a JSON object")
    if execute not in COMMANDS:
        raise ProtocolError(
            UNKNOWN_COMMAND, f"unknown command {execute!r}; known: {', '.join(COMMANDS)}"
        )
    return Request(execute, arguments, obj.get("id"))


def request_id(line: bytes) -> Any:
    """Best effort: the id of a request that failed to parse, so the error can carry it."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj.get("id") if isinstance(obj, dict) else None


def parse_reply(line: bytes) -> dict[str, Any]:
    """Decode one reply line (client side). Raises ProtocolError on garbage."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(BAD_REQUEST, f"agent reply is not valid JSON: {err}") from err
    if not isinstance(obj, dict) or ("return" not in obj and "error" not in obj):
        raise ProtocolError(BAD_REQUEST, "agent reply has neither 'return' nor 'error'")
    if "error" in obj:
        error = obj["error"]
        if not isinstance(error, dict) or not isinstance(error.get("class"), str):
            raise ProtocolError(BAD_REQUEST, "agent error reply is malformed")
    return obj
