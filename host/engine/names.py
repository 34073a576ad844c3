"""What the files of a disk folder are called, how a name is kept inside the folder, and
the content IDs (CIDs) that tie a delta to its parent.

``safe_name`` refuses a name that could resolve outside the folder (path traversal) and
``inside`` a symlink that leads out of it; both raise ForeignFile naming the file that held
the name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from host.engine.errors import ForeignFile

NO_PARENT = 0xFFFFFFFF
BASE_NAME = "disk.vmdk"
FLAT_NAME = "disk-flat.vmdk"

# a layer file name: no slashes, no leading dot, ends in .vmdk
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,200}\.vmdk$")


def new_cid() -> int:
    """A random content ID; never 0xffffffff (which means "no parent")."""
    while True:
        cid = int.from_bytes(os.urandom(4), "little")  # secrets costs 6 ms to import
        if cid != NO_PARENT:
            return cid


def safe_name(folder: Path, name: str, what: str, owner: Path) -> str:
    """Refuse a file name that could resolve outside the disk folder (path traversal)."""
    candidate = Path(name)
    if candidate.is_absolute() or "/" in name or "\\" in name or not SAFE_NAME.match(name):
        resolved = (owner.parent / candidate).resolve()
        raise ForeignFile(
            f"{owner}: {what} {name!r} is not a plain file name in the disk folder "
            f"(resolves to {resolved}); refusing to follow it",
            owner,
        )
    return name


def inside(folder: Path, name: str, owner: Path) -> Path:
    """``folder/name``, refusing symlinks that lead out of the folder."""
    path = folder / name
    if path.is_symlink() and path.resolve().parent != folder.resolve():
        raise ForeignFile(
            f"{owner}: {name} is a symlink out of the disk folder "
            f"(to {path.resolve()}); refusing to follow it",
            owner,
        )
    return path
