"""The daemon's own errors, in the tree rooted in common/errors.py.

    QuiesceError
     ├── StateError     5  the command does not fit the current state (freeze while frozen, ...)
     └── NotConsistent  6  the ceiling thawed before the thaw came: the snapshot is not consistent

(A client that cannot reach the daemon raises the protocol's Unreachable, exit 7.)
"""

from __future__ import annotations

from common.errors import QuiesceError


class StateError(QuiesceError):
    code = "StateError"
    exit_code = 5


class NotConsistent(QuiesceError):
    code = "NotConsistent"
    exit_code = 6
