"""The Writer interface: what the freeze state machine knows of a writer, and nothing more.

A writer quiesces one thing (a script, a database server, a set of filesystems). The state
machine calls, in order and from a worker thread:

    check()                    validate without locking anything (``quiesce-agent check``)
    prepare(op)                everything that blocks no client, while nothing is locked
                               (CHECKPOINT and pg_backup_start, BACKUP STAGE START/FLUSH,
                               syncfs); it may leave something held that blocks nobody
    freeze(op)                 take only what blocks clients; raise WriterError if it cannot
    thaw(op)                   release that lock after the snapshot, at once
    finish(op)                 after every writer's lock is released: the work no client
                               waits for (pg_backup_stop and its backup_label)
    abort(op)                  freezeFail: undo whatever prepare() and freeze() got done,
                               even partly (a started backup is stopped or its session
                               closed); idempotent and safe to call when nothing is held
    artifacts()                what the host should record (backup_label, binlog position, ...)
    emergency_release()        called by the ceiling guard thread while another thread may be
                               stuck in this writer: release the lock by the fastest means,
                               never raise, never block for long (a script's runs its thaw,
                               bounded by its timeout; the ceiling releases scripts last)

Writers never write to disk between freeze() and thaw() returning: no log files, no lazy
imports. ``op.log()`` keeps messages in memory for the report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from common.deadline import Deadline
from hooks.errors import WriterTimeout


class Stage(int, Enum):
    """Freeze order: lower stages freeze first and thaw last."""

    SCRIPTS = 10  # backupScripts.d executables
    MYSQL = 20  # MySQL / MariaDB servers
    POSTGRES = 30  # PostgreSQL clusters
    FILESYSTEMS = 40  # FIFREEZE


@dataclass
class Operation:
    """One freeze cycle as a writer sees it."""

    label: str
    deadline: Deadline
    # Called with each message; the state machine keeps them in memory for the report.
    sink: Callable[[str, str], None] = field(default=lambda writer, msg: None)
    # Told about each filesystem just before it is frozen (True) and after it is thawed
    # (False), so a guard outside the daemon can thaw it if the daemon dies.
    holder: Callable[[str, bool], None] = field(default=lambda path, held: None)

    def log(self, writer: str, message: str) -> None:
        self.sink(writer, message)

    def hold(self, path: str, held: bool) -> None:
        self.holder(path, held)

    def time_left(self, writer: str, step: str) -> float:
        """Seconds left of the freeze budget, or WriterTimeout naming ``writer`` and ``step``."""
        left = self.deadline.remaining()
        if left <= 0:
            raise WriterTimeout(
                writer,
                f"{step}: freeze budget of {self.deadline.seconds:.1f} s used up; "
                "raise freeze.timeout_seconds or find what is slow",
            )
        return left


class Writer(ABC):
    """One thing to quiesce. Subclasses set ``kind`` and ``stage``."""

    kind: ClassVar[str] = "writer"
    stage: ClassVar[Stage] = Stage.SCRIPTS

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def qualified_name(self) -> str:
        """``kind:name``, as reports and errors show it."""
        return f"{self.kind}:{self.name}"

    def describe(self) -> dict[str, Any]:
        """Static facts for the ``writers`` command (never secrets)."""
        return {}

    def check(self) -> list[str]:
        """Validate without locking; return notes, raise WriterError when it cannot work."""
        return []

    def prepare(self, op: Operation) -> None:  # noqa: B027 - optional step
        """Everything that blocks no client, before any lock."""

    @abstractmethod
    def freeze(self, op: Operation) -> None:
        """Take the lock. Raises WriterError (or WriterTimeout) when it cannot."""

    @abstractmethod
    def thaw(self, op: Operation) -> None:
        """Release the lock taken by freeze(). Raises WriterError when the release failed."""

    def finish(self, op: Operation) -> None:  # noqa: B027 - optional step
        """After every lock of the cycle is released: work no client waits for."""

    def abort(self, op: Operation) -> None:
        """freezeFail: undo whatever prepare() and freeze() did, even partly. Default: thaw."""
        self.thaw(op)

    def artifacts(self) -> dict[str, Any]:
        """What the host records with the snapshot."""
        return {}

    def emergency_release(self) -> None:  # noqa: B027 - optional step
        """Release by the fastest means from another thread; never blocks long, never raises."""

    def held_filesystems(self) -> list[str]:
        """Mount points this writer holds frozen right now (for the dead-man guard)."""
        return []
