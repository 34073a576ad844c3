"""The block-device layer the servers share: how a device failure becomes an errno.

One table for NBD and FUSE: an engine error, or the OSError below it, is an errno; FUSE hands
it to the kernel as it is, NBD narrows it to the few its wire defines (``nbd.nbd_error``).
"""

from __future__ import annotations

import errno

from host.engine.durable import NoSpace, ReadOnly

ENGINE_ERRNO: tuple[tuple[type[Exception], int], ...] = (
    (NoSpace, errno.ENOSPC),
    (ReadOnly, errno.EROFS),
)


def errno_of(err: BaseException) -> int:
    """The errno for a failed device call: the engine's kind, the OSError's own, else EIO."""
    for kind, code in ENGINE_ERRNO:
        if isinstance(err, kind):
            return code
    if isinstance(err, OSError) and err.errno:
        return err.errno
    if isinstance(err, MemoryError):
        return errno.ENOMEM
    return errno.EIO
