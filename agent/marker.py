"""The frozen marker under state_dir (/run): what a daemon holds frozen, for restart recovery.

/run is a tmpfs and never frozen, so the marker can be written while filesystems are frozen.
A daemon starting up (and ``quiesce-agent recover``, the unit's ExecStopPost) thaws whatever
a previous instance left listed there.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hooks.kernel import ensure_allowed, thaw_path

logger = logging.getLogger(__name__)
NAME = "frozen.json"


class Marker:
    """The list of filesystems this daemon holds frozen, mirrored to a file."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / NAME
        self.held: list[str] = []

    def update(self, path: str, held: bool) -> None:
        if held and path not in self.held:
            self.held.append(path)
        elif not held and path in self.held:
            self.held.remove(path)
        self._write()

    def _write(self) -> None:
        if not self.held:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "held": self.held}))
        os.replace(tmp, self.path)


def recover(state_dir: str) -> list[str]:
    """Thaw whatever a previous instance left frozen; return messages for the log."""
    path = Path(state_dir) / NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        path.unlink(missing_ok=True)
        return [f"ignored an unreadable marker {path}: {err}"]
    notes = []
    for mount in reversed(data.get("held", [])):
        try:
            ensure_allowed(mount)
            was = thaw_path(mount)
            notes.append(
                f"recovery: thawed {mount} left frozen by pid {data.get('pid')}"
                if was
                else f"recovery: {mount} was not frozen any more"
            )
        except Exception as err:  # noqa: BLE001 - report and go on with the rest
            notes.append(f"recovery: could not thaw {mount}: {err}")
    path.unlink(missing_ok=True)
    return notes
