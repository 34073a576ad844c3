"""The kernel calls, in one place: FIFREEZE / FITHAW, syncfs(2) and the mount table.

The filesystem writer (hooks/filesystems.py) decides what to freeze; the agent's dead-man
guard and its frozen marker thaw with these same calls, never by exec.

Safety: when the environment variable QUIESCE_FREEZE_ONLY_UNDER is set (the test suite sets
it), every FIFREEZE outside those colon-separated directories is refused, in this process
and in every process that inherits the variable; the filesystem writer refuses ``auto``
outright then.

Raises: OSError (the kernel's answer), UnsafeFreezeTarget (a freeze outside the allowed set).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from dataclasses import dataclass

from hooks.errors import UnsafeFreezeTarget

# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int)
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
ALLOW_ENV = "QUIESCE_FREEZE_ONLY_UNDER"
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo, the parts we need."""

    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # path of the mount's root inside its filesystem
    path: str
    fstype: str
    options: frozenset[str]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_mounts(text: str | None = None) -> list[Mount]:
    """Parse mountinfo (this process's by default), in mount order."""
    if text is None:
        with open("/proc/self/mountinfo") as f:
            text = f.read()
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        a, b = left.split(), right.split()
        if len(a) < 6 or len(b) < 1:
            continue
        mounts.append(
            Mount(
                mount_id=int(a[0]),
                parent_id=int(a[1]),
                device=a[2],
                root=_unescape(a[3]),
                path=_unescape(a[4]),
                fstype=b[0],
                options=frozenset(a[5].split(",")),
            )
        )
    return mounts


def allowed_roots() -> list[str] | None:
    """The directories FIFREEZE is confined to, or None when unconfined."""
    value = os.environ.get(ALLOW_ENV)
    if not value:
        return None
    return [os.path.realpath(p) for p in value.split(":") if p]


def ensure_allowed(path: str) -> None:
    """Refuse a freeze outside QUIESCE_FREEZE_ONLY_UNDER (when set)."""
    roots = allowed_roots()
    if roots is None:
        return
    real = os.path.realpath(path)
    if not any(real == r or real.startswith(r + os.sep) for r in roots):
        raise UnsafeFreezeTarget(
            f"refusing to freeze {path}: {ALLOW_ENV} confines freezes to {':'.join(roots)}"
        )


def syncfs_path(path: str) -> None:
    """Flush one filesystem (syncfs(2)), not every filesystem as sync(2) would."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def freeze_path(path: str) -> None:
    """FIFREEZE one mount point. Raises OSError (EBUSY: already frozen) or UnsafeFreezeTarget."""
    ensure_allowed(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    finally:
        os.close(fd)


def thaw_path(path: str) -> bool:
    """FITHAW one mount point; False if it was not frozen (EINVAL). Raises other OSErrors."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
        return True
    except OSError as err:
        if err.errno == errno.EINVAL:
            return False
        raise
    finally:
        os.close(fd)
