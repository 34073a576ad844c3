"""The daemon's own errors, in the tree rooted in common/errors.py.

    QuiesceError
     ├── StateError     5  the command does not fit the current state (freeze while frozen, ...)
     ├── NotConsistent  6  the ceiling thawed before the thaw came: the snapshot is not consistent
     └── HostGone       4  the host a bound freeze lives on went away before it was done
                           (rolled back, as a failed writer is)

(A client that cannot reach the daemon raises the protocol's Unreachable, exit 7.)
"""

from __future__ import annotations

from agent.protocol import HOST_GONE, NOT_CONSISTENT, STATE_ERROR
from common.errors import QuiesceError


class StateError(QuiesceError):
    code = STATE_ERROR
    exit_code = 5


class NotConsistent(QuiesceError):
    code = NOT_CONSISTENT
    exit_code = 6


class HostGone(QuiesceError):
    code = HOST_GONE
    exit_code = 4
