"""Which filesystems ``auto`` freezes, in which order; ``auto`` unreachable in the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config, writers
from hooks import filesystems, kernel
from hooks.errors import UnsafeFreezeTarget

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /proc rw,nosuid - proc proc rw
24 22 0:20 / /run rw,nosuid - tmpfs tmpfs rw
25 22 8:2 / /var rw,relatime - xfs /dev/sda2 rw
26 25 7:0 / /var/lib/images rw,relatime - ext4 /dev/loop0 rw
27 22 0:40 / /mnt/share rw - nfs4 server:/export rw
28 22 8:3 / /boot ro,relatime - ext4 /dev/sda3 ro
29 22 8:2 /data /srv/data rw,relatime - xfs /dev/sda2 rw
30 22 0:41 / /home/me/fuse rw - fuse.sshfs me@h: rw
31 22 8:4 / /with\\040space rw - ext4 /dev/sda4 rw
"""


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch) -> list[kernel.Mount]:
    monkeypatch.setattr(filesystems.os.path, "isdir", lambda p: True)
    return kernel.read_mounts(MOUNTINFO)


def test_auto_freezes_local_writable_filesystems_children_first(
    mounts: list[kernel.Mount],
) -> None:
    order, skipped = filesystems.plan(mounts, None, [])
    assert order == ["/with space", "/var/lib/images", "/var", "/"]
    reasons = dict(skipped)
    assert "pseudo" in reasons["/proc"] and "pseudo" in reasons["/run"]
    assert "network" in reasons["/mnt/share"]
    assert "read-only" in reasons["/boot"]
    assert "bind mount" in reasons["/srv/data"]  # same superblock as /var: EBUSY otherwise
    assert "user-space" in reasons["/home/me/fuse"]


def test_excluded_and_listed_mounts(mounts: list[kernel.Mount]) -> None:
    order, skipped = filesystems.plan(mounts, None, ["/var/lib/images"])
    assert "/var/lib/images" not in order
    order, _ = filesystems.plan(mounts, ["/", "/var/lib/images"], [])
    assert order == ["/var/lib/images", "/"]


def test_a_listed_path_that_is_not_a_mount_point_is_an_error(
    mounts: list[kernel.Mount],
) -> None:
    with pytest.raises(filesystems.WriterError, match="not a mount point"):
        filesystems.plan(mounts, ["/var/lib"], [])


def test_the_suite_cannot_reach_auto() -> None:
    writer = filesystems.FilesystemsWriter(None)
    with pytest.raises(UnsafeFreezeTarget, match="auto is refused"):
        writer.check()


def test_an_empty_mount_list_freezes_nothing_rather_than_everything() -> None:
    # 'mounts: []' is "no filesystems"; only 'auto' may mean every local filesystem
    assert filesystems.FilesystemsWriter(()).check() == []


def test_an_empty_mount_list_builds_no_filesystem_writer(tmp_path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"state_dir: {tmp_path}\nfilesystems:\n  mounts: []\nscripts: null\n")
    notes: list[str] = []
    built = writers.build_all(config.load(str(path)), notes)
    assert [w.kind for w in built] == []
    assert "no filesystem is frozen" in notes[0]


def test_the_writer_names_itself_in_full_when_a_listed_path_is_not_mounted(
    tmp_path: Path,
) -> None:
    writer = filesystems.FilesystemsWriter((str(tmp_path / "nowhere"),))
    with pytest.raises(filesystems.WriterError) as err:
        writer.check()
    assert err.value.writer == "filesystems:listed"
