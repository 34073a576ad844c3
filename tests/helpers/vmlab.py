"""A database VM of three disks on this machine: ``quiesce-host serve VM --fuse``, an ext4 on
each disk's file, PostgreSQL with its data directory on disk 1, ``pg_wal`` on disk 2 and its
table in a tablespace on disk 3, MariaDB with its data on disk 1 and its binary log on disk 2.

The single-disk lab (``host.lab.local.Lab``) with a VM where its disk was: its life-cycle
(``take_down``, ``bring_up``, ``close`` in the one safe order), its databases, the insert load
and the verdict are reused as they are; only what differs per disk is here. Everything lives
under one folder in FREEZE_ROOT, so the agent's FIFREEZE cannot reach anything else.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from host.engine.vm import VM
from host.lab.databases import LabMaria, LabPostgres, chown_tree, run
from host.lab.load import create_tables
from host.lab.local import Lab, console_script, spawn
from tests.helpers.env import FREEZE_ROOT

DISKS = ("data", "wal", "space")  # disk 1: data directories, 2: WAL and binlog, 3: tablespace


class SplitMaria(LabMaria):
    """MariaDB whose binary log lives in ``binlog_dir`` (another disk than its data)."""

    def __init__(self, datadir: Path, rundir: Path, binlog_dir: Path) -> None:
        super().__init__(datadir, rundir, binlog=True)
        self.binlog_dir = binlog_dir

    def init(self) -> SplitMaria:
        self.binlog_dir.mkdir(parents=True, exist_ok=True)
        chown_tree(self.binlog_dir, self.owner)
        super().init()
        return self

    def command(self) -> list[str]:
        base = f"--log-bin={self.binlog_dir / 'binlog'}"
        return [base if arg == "--log-bin=binlog" else arg for arg in super().command()]


class VmLab(Lab):
    """The lab with a VM of ``DISKS`` served through FUSE, one ext4 mounted per disk."""

    def __init__(self, size: int = 256 << 20) -> None:
        os.chmod(FREEZE_ROOT, 0o711)  # 0700 from mkdtemp: the database users must traverse it
        super().__init__(parent=FREEZE_ROOT, size=size)
        self.vm = self.root / "vm"
        self.mounts = {name: self.mnt / name for name in DISKS}
        for d in self.mounts.values():
            d.mkdir()
        os.chmod(self.mnt, 0o711)
        self.pg = LabPostgres(self.mounts["data"] / "pg", self.run / "pg")
        self.binlog_dir = self.mounts["wal"] / "binlog"
        self.maria = SplitMaria(self.mounts["data"] / "mysql", self.run / "mysql", self.binlog_dir)
        self.tablespace = self.mounts["space"] / "pgts"

    def file(self, disk: str) -> Path:
        return self.fuse / f"{disk}.raw"

    # -- building ---------------------------------------------------------------------------
    def build(self) -> None:
        VM.create(self.vm, [(name, self.size) for name in DISKS]).close()
        self.serve()
        for name in DISKS:
            mkfs = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
            run([*mkfs, str(self.file(name))], timeout=120)
        self.mount()
        self.pg.init()
        self._wal_to_disk_2()
        self.maria.init()
        self.pg.start()
        self.maria.start()
        self.tablespace.mkdir()
        chown_tree(self.tablespace, self.pg.owner)
        self.pg.sql(f"CREATE TABLESPACE space LOCATION '{self.tablespace}'")
        create_tables(self)
        self.pg.sql("ALTER TABLE demo_rows SET TABLESPACE space")  # its index stays on disk 1

    def _wal_to_disk_2(self) -> None:
        """``pg_wal`` moved to disk 2 and linked from the data directory (initdb --waldir)."""
        wal = self.mounts["wal"] / "pg_wal"
        shutil.move(str(self.pg.datadir / "pg_wal"), wal)
        chown_tree(wal, self.pg.owner)
        os.symlink(wal, self.pg.datadir / "pg_wal")
        if self.pg.owner is not None:
            os.lchown(self.pg.datadir / "pg_wal", *self.pg.owner)

    def agent_config(self, mounts: list[str]) -> dict[str, Any]:
        """The agent's configuration: both databases and the filesystems of ``mounts``."""
        return {
            "freeze": {"ceiling_seconds": 30, "timeout_seconds": 20},
            "filesystems": {"mounts": [str(self.mounts[m]) for m in mounts]},
            "postgres": [{"name": "vm", "dsn": self.pg.dsn}],
            "mysql": [{"name": "vm", "unix_socket": self.maria.socket, "user": "root"}],
        }

    # -- what differs per disk ---------------------------------------------------------------
    def serve(self) -> None:
        """``quiesce-host serve VM --fuse fuse/``; wait for every disk's file."""
        cmd = [console_script("quiesce-host"), "serve", str(self.vm), "--fuse", str(self.fuse)]
        self.serve_proc = spawn(cmd, self.run / "serve.log")
        end = time.monotonic() + 30
        while not all(self.file(n).exists() for n in DISKS):
            if self.serve_proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(
                    f"quiesce-host serve did not come up:\n{self._log('serve.log')}"
                )
            time.sleep(0.05)

    def mount(self) -> None:
        for name in DISKS:
            run(["mount", "-o", "loop", str(self.file(name)), str(self.mounts[name])], timeout=60)

    def umount(self) -> None:
        for name in reversed(DISKS):
            if os.path.ismount(self.mounts[name]):
                run(["umount", str(self.mounts[name])], timeout=120)

    def _thaw_mnt(self) -> None:
        for mnt in self.mounts.values():  # EINVAL when not frozen: fine
            if os.path.ismount(mnt):
                run(["fsfreeze", "-u", str(mnt)], timeout=10, check=False)

    def _umount_hard(self) -> None:
        for name in reversed(DISKS):
            mnt = self.mounts[name]
            if os.path.ismount(mnt):
                if run(["umount", str(mnt)], timeout=120, check=False).returncode != 0:
                    run(["umount", "-l", str(mnt)], timeout=60, check=False)
