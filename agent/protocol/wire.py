"""The wire format: one JSON object per line, shaped like the QEMU guest agent's.

    request  {"execute": "freeze", "arguments": {...}, "id": 7}
    success  {"return": {...}, "id": 7}
    failure  {"error": {"class": "WriterFailed", "desc": "...", "data": {...}}, "id": 7}

``parse_request`` takes the command set, so the control socket of ``quiesce-host serve``
speaks the same format with its own commands. Raises ProtocolError (agent/protocol/errors.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent.protocol.errors import (
    BAD_REQUEST,
    LINE_TOO_LONG,
    UNKNOWN_COMMAND,
    ProtocolError,
)

MAX_LINE = 64 * 1024  # bytes; a longer request line is refused and the connection closed
MAX_REPLY = 4 * 1024 * 1024  # a report with backup_label texts and messages stays far below
COMMANDS = ("ping", "freeze", "thaw", "abort", "status", "writers")
DEFAULT_SOCKET = "/run/quiesce-agent/agent.sock"
CONNECT_TIMEOUT = 5.0  # seconds to connect, and for the quick replies (ping, status)
MAX_CEILING = 60.0  # no agent holds a freeze longer, whatever its configuration says


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
    return {"return": ret} if id is None else {"return": ret, "id": id}


def failure(
    error_class: str, desc: str, data: dict[str, Any] | None = None, id: Any = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"class": error_class, "desc": desc}
    if data:
        err["data"] = data
    return {"error": err} if id is None else {"error": err, "id": id}


def _json_object(line: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(BAD_REQUEST, f"{what} is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, f"{what} must be a JSON object")
    return obj


def parse_request(
    line: bytes, commands: tuple[str, ...] = COMMANDS, limit: int = MAX_LINE
) -> Request:
    """Decode one request line. Raises ProtocolError with a class a client can act on."""
    if len(line) > limit:
        raise ProtocolError(LINE_TOO_LONG, f"request line longer than {limit} bytes")
    obj = _json_object(line, "request")
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
    if execute not in commands:
        known = ", ".join(commands)
        raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {execute!r}; known: {known}")
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
    obj = _json_object(line, "reply")
    if "return" not in obj and "error" not in obj:
        raise ProtocolError(BAD_REQUEST, "reply has neither 'return' nor 'error'")
    if "error" in obj:
        error = obj["error"]
        if not isinstance(error, dict) or not isinstance(error.get("class"), str):
            raise ProtocolError(BAD_REQUEST, "error reply is malformed")
    return obj
