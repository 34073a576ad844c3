"""Files replaced whole or not at all (borg's ``SaveFile``), and the folder fsync they need.

``atomic_file(path)`` gives the descriptor of a temp file beside ``path``; when the block
ends cleanly the file is fsync-ed, renamed over ``path`` and the folder fsync-ed, so a crash
at any instant leaves the old file or the new one, whole. On any error the temp file is
removed and ``path`` is untouched. The temp file is ``.NAME.tmp-PID``, a name the disk
engine sweeps away after a crash.

Raises OSError (ENOSPC and EDQUOT among them); callers turn it into their own errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def temp_name(path: Path) -> Path:
    """Where ``atomic_file`` writes before the rename: ``.NAME.tmp-PID`` in the same folder."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename or unlink in it is durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """write() every byte (a short write is retried, so a full disk raises ENOSPC)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: int = 0o644, owner: tuple[int, int] | None = None
) -> Iterator[int]:
    """The fd of a new temp file that replaces ``path`` when the block ends without error.

    ``mode`` is applied as given (not through the umask); ``owner`` is a (uid, gid) to chown
    the file to before it becomes visible.
    """
    target = Path(path)
    tmp = temp_name(target)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8) so that a crash leaves old or new."""
    with atomic_file(path, mode, owner) as fd:
        write_all(fd, data.encode() if isinstance(data, str) else data)
