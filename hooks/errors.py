"""The writers' errors, in the tree rooted in common/errors.py.

    QuiesceError                 root (common/errors.py); ``code`` is the protocol error class
     ├── WriterError             a writer failed; names the writer and the cause
     │    ├── WriterTimeout      a writer step ran out of its time budget
     │    └── WriterUnavailable  a writer cannot work at all (server down, no permission)
     └── UnsafeFreezeTarget      a freeze of a filesystem outside the allowed set was refused

Every class carries a stable ``code`` (the protocol's ``error.class``) and a CLI exit code.
"""

from __future__ import annotations

from common.errors import QuiesceError


class WriterError(QuiesceError):
    """A writer failed; ``writer`` names it."""

    code = "WriterFailed"
    exit_code = 4

    def __init__(self, writer: str, message: str, **data: object) -> None:
        super().__init__(f"{writer}: {message}", writer=writer, **data)
        self.writer = writer


class WriterTimeout(WriterError):
    """A writer step did not finish within its budget."""

    code = "WriterTimeout"


class WriterUnavailable(WriterError):
    """A writer cannot work: its server is unreachable, a permission is missing, ..."""

    code = "WriterUnavailable"


class UnsafeFreezeTarget(QuiesceError):
    """A FIFREEZE outside the allowed set was refused (see hooks/kernel.py)."""

    code = "UnsafeFreezeTarget"
    exit_code = 4
