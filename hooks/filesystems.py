"""The filesystem writer: which mount points to freeze, in which order, and freezing them.

Freeze order is reverse mount order (children before parents, ``/`` last) and thaw order is
mount order, so a loop-backed filesystem never waits on a frozen parent. ``auto`` picks every
local, writable, freezable filesystem once per superblock; pseudo and network filesystems,
read-only mounts, bind duplicates and mount points that are not directories are skipped.

The ioctls, syncfs and the mount table are hooks/kernel.py's. Safety: while
QUIESCE_FREEZE_ONLY_UNDER is set (the test suite sets it), hooks/kernel.py refuses every
FIFREEZE outside those directories, and this writer refuses ``auto`` outright.

Raises: WriterError (a freeze failed), UnsafeFreezeTarget (a freeze outside the allowed set).
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

from hooks.base import Operation, Stage, Writer
from hooks.errors import UnsafeFreezeTarget, WriterError
from hooks.kernel import (
    ALLOW_ENV,
    Mount,
    allowed_roots,
    ensure_allowed,
    freeze_path,
    read_mounts,
    syncfs_path,
    thaw_path,
)

PSEUDO = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "tmpfs",
        "ramfs",
        "cgroup",
        "cgroup2",
        "pstore",
        "securityfs",
        "debugfs",
        "tracefs",
        "configfs",
        "fusectl",
        "mqueue",
        "hugetlbfs",
        "bpf",
        "binfmt_misc",
        "autofs",
        "rpc_pipefs",
        "nsfs",
        "efivarfs",
        "selinuxfs",
        "squashfs",
        "iso9660",
        "overlay",
        "aufs",
        "devfs",
        "rootfs",
        "zfs",
    }
)
NETWORK = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "9p",
        "virtiofs",
        "afs",
        "lustre",
        "gfs2",
        "ocfs2",
        "sshfs",
        "davfs",
    }
)


def skip_reason(m: Mount) -> str | None:
    """Why ``auto`` leaves this mount alone, or None if it should be frozen."""
    base = m.fstype.split(".")[0]
    if m.fstype in PSEUDO or base in ("fuse", "fuseblk"):
        return f"{m.fstype} is a pseudo or user-space filesystem"
    if m.fstype in NETWORK:
        return f"{m.fstype} is a network filesystem"
    if "ro" in m.options:
        return "mounted read-only"
    if not os.path.isdir(m.path):
        return "mount point is not a directory"
    return None


def plan(
    mounts: list[Mount],
    explicit: list[str] | None,
    exclude: list[str],
    writer: str = "filesystems",
) -> tuple[list[str], list[tuple[str, str]]]:
    """Choose what to freeze: (paths in freeze order, [(path, skip reason)]). Raises
    WriterError naming ``writer`` (the writer's full name) for a listed path that is not a
    mount point."""
    skipped: list[tuple[str, str]] = []
    by_path = {m.path: m for m in mounts}  # the last mount on a path is the visible one
    chosen: dict[str, Mount] = {}
    if explicit is not None:
        for path in explicit:
            m = by_path.get(path)
            if m is None:
                raise WriterError(writer, f"{path} is not a mount point; fix filesystems.mounts")
            chosen[path] = m
    else:
        for m in by_path.values():
            reason = skip_reason(m)
            if reason:
                skipped.append((m.path, reason))
            else:
                chosen[m.path] = m
    seen: dict[str, str] = {}
    result = []
    for path, m in sorted(chosen.items(), key=lambda kv: _mount_index(mounts, kv[1])):
        if path in exclude:
            skipped.append((path, "excluded by filesystems.exclude"))
        elif m.device in seen:
            skipped.append((path, f"same filesystem as {seen[m.device]} (bind mount)"))
        else:
            seen[m.device] = path
            result.append(path)
    result.reverse()  # freeze children before parents: reverse mount order
    return result, skipped


def _mount_index(mounts: list[Mount], m: Mount) -> int:
    return mounts.index(m)


class FilesystemsWriter(Writer):
    """Freezes a set of mount points with FIFREEZE, thaws them with FITHAW."""

    kind = "filesystems"
    stage = Stage.FILESYSTEMS

    def __init__(
        self,
        mounts: tuple[str, ...] | None,
        exclude: tuple[str, ...] = (),
        protect: tuple[str, ...] = (),
    ) -> None:
        super().__init__("local" if mounts is None else "listed")
        self.mounts = mounts
        self.exclude = exclude
        self.protect = protect  # paths whose filesystem must never be frozen (the state dir)
        self.targets: list[str] = []
        self.frozen: list[str] = []  # in freeze order
        self.foreign: list[str] = []  # already frozen by someone else: reported, left alone
        self._lock = threading.Lock()
        self._aborted = False

    def describe(self) -> dict[str, Any]:
        return {
            "mounts": "auto" if self.mounts is None else list(self.mounts),
            "exclude": list(self.exclude),
        }

    def _plan(self) -> tuple[list[str], list[tuple[str, str]]]:
        if self.mounts is None and allowed_roots() is not None:
            raise UnsafeFreezeTarget(
                f"filesystems.mounts: auto is refused while {ALLOW_ENV} is set (test suite); "
                "list the mount points explicitly"
            )
        # an empty list freezes nothing; only None (auto) means every local filesystem
        explicit = None if self.mounts is None else list(self.mounts)
        targets, skipped = plan(read_mounts(), explicit, list(self.exclude), self.qualified_name)
        for path in targets:
            ensure_allowed(path)
        self._check_protected(targets)
        return targets, skipped

    def _check_protected(self, targets: list[str]) -> None:
        devs = {os.stat(t).st_dev: t for t in targets}
        for p in self.protect:
            if os.path.exists(p) and os.stat(p).st_dev in devs:
                raise WriterError(
                    self.qualified_name,
                    f"{p} lies on {devs[os.stat(p).st_dev]}, which would be frozen; "
                    "the agent's state_dir must be on a filesystem that is not frozen "
                    "(/run), or exclude that mount",
                )

    def check(self) -> list[str]:
        targets, skipped = self._plan()
        return [f"would freeze {t}" for t in targets] + [f"skip {p}: {r}" for p, r in skipped]

    def prepare(self, op: Operation) -> None:
        self.targets, skipped = self._plan()
        for path, reason in skipped:
            op.log(self.qualified_name, f"skip {path}: {reason}")
        with self._lock:
            self.frozen, self.foreign, self._aborted = [], [], False
        for path in self.targets:  # the slow flush happens here, before anything is locked
            syncfs_path(path)

    def freeze(self, op: Operation) -> None:
        for path in self.targets:
            op.time_left(self.qualified_name, f"before freezing {path}")
            op.hold(path, True)
            try:
                freeze_path(path)
            except OSError as err:
                op.hold(path, False)
                if err.errno == errno.EBUSY:
                    self.foreign.append(path)
                    op.log(
                        self.qualified_name,
                        f"{path} was already frozen by someone else; "
                        "left as it is and not thawed by us",
                    )
                    continue
                if err.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                    op.log(
                        self.qualified_name, f"skip {path}: filesystem does not support freezing"
                    )
                    continue
                raise WriterError(
                    self.qualified_name, f"FIFREEZE {path} failed: {err.strerror}"
                ) from err
            with self._lock:
                if self._aborted:  # the budget ran out while this ioctl was blocked: undo it
                    thaw_path(path)
                    op.hold(path, False)
                    raise WriterError(
                        self.qualified_name,
                        f"FIFREEZE {path} returned after the freeze was abandoned; thawed it",
                    )
                self.frozen.append(path)
            op.log(self.qualified_name, f"froze {path}")

    def thaw(self, op: Operation) -> None:
        errors = self._thaw_all(op)
        if errors:
            raise WriterError(self.qualified_name, "; ".join(errors))

    def abort(self, op: Operation) -> None:
        with self._lock:
            self._aborted = True
        self.thaw(op)

    def _thaw_all(self, op: Operation | None) -> list[str]:
        errors = []
        with self._lock:
            frozen, self.frozen = self.frozen, []
        for path in reversed(frozen):  # mount order: parents before children
            try:
                was = thaw_path(path)
                if op:
                    op.hold(path, False)
                    op.log(
                        self.qualified_name,
                        f"thawed {path}" if was else f"{path} was already thawed",
                    )
            except OSError as err:
                errors.append(f"FITHAW {path} failed: {err.strerror}")
        return errors

    def emergency_release(self) -> None:
        with self._lock:
            self._aborted = True
        try:
            self._thaw_all(None)
        except Exception:  # noqa: BLE001 - never raise from the ceiling path
            pass

    def held_filesystems(self) -> list[str]:
        with self._lock:
            return list(self.frozen)
