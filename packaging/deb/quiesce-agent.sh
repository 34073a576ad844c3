#!/bin/sh
# quiesce-agent from the Debian package: its modules are private, in /usr/share/quiesce-agent
# (names like "agent" and "common" have no place among the system's Python modules).
# PYTHONSAFEPATH: never import from the current folder (the daemon and its guard run as root);
# the guard, started by the daemon, inherits both.
PYTHONPATH=/usr/share/quiesce-agent
PYTHONSAFEPATH=1
export PYTHONPATH PYTHONSAFEPATH
exec /usr/bin/python3 -m agent "$@"
