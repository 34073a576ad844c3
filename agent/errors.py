"""Agent-side errors, added to the tree rooted in hooks/errors.py.

QuiesceError
 ├── StateError        the command does not fit the current state (freeze while frozen, ...)
 ├── NotConsistent     the ceiling thawed before the thaw came: the snapshot is not consistent
 └── AgentUnreachable  the CLI could not talk to the daemon
"""

from __future__ import annotations

from common.errors import QuiesceError


class StateError(QuiesceError):
    code = "StateError"
    exit_code = 5


class NotConsistent(QuiesceError):
    code = "NotConsistent"
    exit_code = 6


class AgentUnreachable(QuiesceError):
    code = "AgentUnreachable"
    exit_code = 7
