"""The kernel-call module: the mount table as mountinfo gives it, and the suite's safety net."""

from __future__ import annotations

import pytest

from hooks import kernel
from hooks.errors import UnsafeFreezeTarget

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
29 22 8:2 /data /srv/data rw,relatime - xfs /dev/sda2 rw
31 22 8:4 / /with\\040space\\011tab\\134slash ro,nosuid - ext4 /dev/sda4 ro
a line that is not mountinfo
"""


def test_mountinfo_gives_each_mount_in_order_with_its_escapes_undone() -> None:
    root, data, odd = kernel.read_mounts(MOUNTINFO)
    assert root == kernel.Mount(
        mount_id=22,
        parent_id=1,
        device="8:1",
        root="/",
        path="/",
        fstype="ext4",
        options=frozenset({"rw", "relatime"}),
    )
    assert (data.root, data.path, data.parent_id) == ("/data", "/srv/data", 22)
    assert odd.path == "/with space\ttab\\slash"
    assert "ro" in odd.options


def test_this_process_mount_table_has_a_root() -> None:
    assert any(m.path == "/" for m in kernel.read_mounts())


def test_the_suite_cannot_freeze_the_root_filesystem() -> None:
    # tests/helpers/env.py confines FIFREEZE to its own directory for the whole run
    # checked without ever calling FIFREEZE on them: if the guard broke, this must fail, not
    # freeze the machine; freeze_path itself is shown to check first on a path that does not
    # exist (a broken guard gives FileNotFoundError there, never a freeze)
    assert kernel.allowed_roots()
    for path in ("/", "/tmp"):
        with pytest.raises(UnsafeFreezeTarget):
            kernel.ensure_allowed(path)
    with pytest.raises(UnsafeFreezeTarget):
        kernel.freeze_path("/nonexistent/quiesce-agent-test")
