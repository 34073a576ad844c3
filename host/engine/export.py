"""A disk's state written out as a raw image file, zero runs left as holes.

The image is written to ``OUT.part``, fsync-ed (unless asked not to) and renamed to ``OUT``,
so a cut-short export never looks complete. It reads through a function, chunk by chunk, so
that the caller decides what each read holds (``Disk.export_raw`` takes its lock per chunk).

Raises NoSpace or DiskError (writing the image; the ``.part`` file is removed), and what the
read raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from host.engine.chain import Progress
from host.engine.durable import pwrite_all
from host.engine.errors import space_error

CHUNK = 4 * 1024 * 1024
ZERO_CHUNK = bytes(CHUNK)


def write_raw(
    out: Path,
    size: int,
    read: Callable[[int, int], bytes],
    progress: Progress | None = None,
    sync: bool = True,
) -> None:
    """Write the ``size`` bytes ``read(offset, length)`` gives into the raw image ``out``."""
    part = out.with_name(out.name + ".part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for pos in range(0, size, CHUNK):
                n = min(CHUNK, size - pos)
                data = read(pos, n)
                if data != ZERO_CHUNK[:n]:
                    pwrite_all(fd, data, pos)
                if progress:
                    progress(pos + n, size)
            os.ftruncate(fd, size)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(part, out)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise space_error(err, out, "exporting") from err
    except BaseException:
        part.unlink(missing_ok=True)
        raise
