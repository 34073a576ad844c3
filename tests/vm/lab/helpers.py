"""What the VM lab's tests check after a lab: nothing of it still running, nothing mounted."""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def processes_of(root: Path) -> list[str]:
    """Processes whose command line names a path under ``root`` (QEMU, the VM's server)."""
    mine = str(root)
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if mine in cmdline and p.info["pid"] != os.getpid():
            found.append(f"{p.info['pid']}: {cmdline[:160]}")
    return found


def mounts_under(root: Path) -> list[str]:
    prefix = os.path.realpath(root)
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def assert_gone(root: Path) -> None:
    """The lab at ``root`` left nothing: no process, no mount, no folder."""
    assert processes_of(root) == []
    assert mounts_under(root) == []
    assert not root.exists(), f"{root} is still there"
