"""The root of every error this project raises on purpose, and the exit codes they map to.

    QuiesceError                     2  root; ``code`` is the protocol's error ``class``
     ├── ConfigError                 3  a setting is missing or wrong; the message names the key
     ├── hooks/errors.py             4  WriterError (WriterTimeout, WriterUnavailable),
     │                                  UnsafeFreezeTarget
     ├── agent/errors.py             5  StateError, 6 NotConsistent
     ├── agent/protocol/errors.py    2  ProtocolError (a bad line), EndpointError;
     │                                  7 Unreachable (NoReply), 8 Garbage, 9 Refused: what
     │                                  the one client raises, for the agent and the servers
     ├── host/engine/errors.py       2  DiskError, 10..19 its kinds (ForeignFile ... NoSpace)
     ├── host/serve/...              2  ServeError, NBDConfigError, FuseServeError
     ├── host/snapshots/cycle.py    20  QuiesceFailed, 21 NotConfirmed
     └── host/lab/databases.py       2  LabError

One table of exit codes, ``MEANINGS``, serves both command lines (``quiesce-agent`` and
``quiesce-host``): a number means the same thing in both, and every class takes its code from
it (a unit test holds every class to the table). ``exit_codes()`` lists the table with the
classes that give each code, for the CLIs' help.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE

MEANINGS: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_WARNING: "done, with a warning (disk check found problems; crash-consistent fallback)",
    2: "error (bad request or arguments, internal error, a step that failed)",
    3: "configuration error (the message names the key)",
    4: "a writer failed: the freeze was rolled back, or a thaw had errors",
    5: "wrong state (freeze while frozen, thaw with nothing frozen)",
    6: "not consistent: the ceiling thawed before the thaw came",
    7: "unreachable: the agent, or the server holding the disk, does not answer",
    8: "garbage: the other end does not speak the protocol",
    9: "refused: the agent or the server answered with an error",
    10: "not a file the disk engine can use (ForeignFile)",
    11: "a damaged disk file (CorruptFile)",
    12: "a broken chain: a missing parent, a parent loop (ChainBroken)",
    13: "a child's parentCID is not its parent's CID (CidMismatch)",
    14: "a 33rd snapshot in one chain (ChainTooDeep)",
    15: "no such snapshot (SnapshotNotFound)",
    16: "the snapshot exists already (SnapshotExists)",
    17: "the disk or an RBD image is in use by another process (DiskBusy, ImageInUse)",
    18: "a write on a disk opened read-only (ReadOnly)",
    19: "no space left; the operation was undone or can be finished (NoSpace)",
    20: "the quiesce failed (--quiesce-mode required): no snapshot was left behind",
    21: "the quiesce was not confirmed and the snapshot could not be deleted again",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM)",
    EXIT_OUTPUT_CLOSED: "the reader of the output went away (piped into head)",
}


class QuiesceError(Exception):
    """Root of every error this project raises on purpose."""

    code: ClassVar[str] = "GenericError"
    exit_code: ClassVar[int] = 2

    def __init__(self, message: str, **data: object) -> None:
        super().__init__(message)
        self.data: dict[str, object] = dict(data)


class ConfigError(QuiesceError):
    """The configuration is invalid; the message lists every bad key."""

    code = "ConfigError"
    exit_code = 3


def error_classes() -> list[type[QuiesceError]]:
    """Every class of the tree that has been imported so far, root first."""
    found: list[type[QuiesceError]] = []
    todo: list[type[QuiesceError]] = [QuiesceError]
    while todo:
        cls = todo.pop(0)
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return found


def exit_code_by_class() -> dict[str, int]:
    """The protocol's error ``class`` -> the exit code a CLI returns for it."""
    return {cls.code: cls.exit_code for cls in error_classes()}


def exit_codes() -> dict[int, list[str]]:
    """Exit code -> the error codes (of the classes imported so far) that give it."""
    table: dict[int, list[str]] = {}
    for cls in error_classes():
        names = table.setdefault(cls.exit_code, [])
        if cls.code not in names:
            names.append(cls.code)
    return dict(sorted(table.items()))


def exit_code_help(codes: list[int]) -> str:
    """The lines of ``MEANINGS`` for ``codes``, for a CLI's ``--help`` epilog."""
    return "exit codes:\n" + "\n".join(f"  {c:>3}  {MEANINGS[c]}" for c in codes)
