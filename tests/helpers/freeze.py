"""Probes of a frozen filesystem (one this test made): is it frozen, does a write get through?"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

from hooks.kernel import freeze_path, thaw_path


def frozen_now(path: str) -> bool:
    """Is this (test-made) filesystem frozen? A second FIFREEZE says EBUSY if so."""
    try:
        freeze_path(path)
    except OSError as err:
        if err.errno == errno.EBUSY:
            return True
        raise
    thaw_path(path)
    return False


class Writer:
    """A process that writes and fsyncs a file on a mount, as an application would."""

    def __init__(self, mount: str, name: str = "probe") -> None:
        code = (
            "import os,sys; f=open(sys.argv[1],'w'); f.write('x'*4096); f.flush(); "
            "os.fsync(f.fileno()); f.close()"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code, os.path.join(mount, name)])
        self.started = time.monotonic()

    def done_within(self, seconds: float) -> bool:
        try:
            self.proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False
