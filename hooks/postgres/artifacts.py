"""A backup's label files on disk: ``backup_label``, ``tablespace_map`` (when not empty) and
``backup_info.json``, in a folder per snapshot under ``artifacts_dir``.

Written after the thaw, when nothing is frozen; each file with common/files.py's
atomic_write, so a crash leaves the old file or the new one, whole, and the folder is
fsync-ed.

Raises: OSError (the writer reports it; the label is in the thaw report anyway).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from common.files import atomic_write


def safe_label(label: str) -> str:
    """A label usable as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", label)[:100].lstrip(".") or "backup"


def label_folder(artifacts_dir: str, label: str) -> str:
    """Where the files of the snapshot ``label`` go."""
    return os.path.join(artifacts_dir, safe_label(label))


def write_label_files(
    folder: str, backup_label: str, tablespace_map: str, info: dict[str, Any]
) -> None:
    """Write the label files into ``folder``, made if need be (mode 0750)."""
    os.makedirs(folder, mode=0o750, exist_ok=True)
    atomic_write(os.path.join(folder, "backup_label"), backup_label)
    if tablespace_map:
        atomic_write(os.path.join(folder, "tablespace_map"), tablespace_map)
    atomic_write(
        os.path.join(folder, "backup_info.json"),
        json.dumps(info, indent=2, sort_keys=True) + "\n",
    )
