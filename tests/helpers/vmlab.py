"""A database VM of three disks on this machine: ``quiesce-host serve VM --fuse``, an ext4 on
each disk's file, PostgreSQL with its data directory on disk 1, ``pg_wal`` on disk 2 and its
table in a tablespace on disk 3, MariaDB with its data on disk 1 and its binary log on disk 2.

The single-disk lab (``host.lab.local.Lab``) with its pieces reused: the databases
(``LabPostgres``, ``LabMaria``), the insert load and the verdict read them through ``pg``
and ``maria`` as they read the lab's. Everything lives under one folder in FREEZE_ROOT, so the
agent's FIFREEZE cannot reach anything else; ``close()`` takes it down in the lab's order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from host.engine.vm import VM
from host.lab.databases import LabMaria, LabPostgres, chown_tree, run
from host.lab.load import create_tables
from host.lab.local import console_script, spawn, stop
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


class VmLab:
    """The VM's parts and their life-cycle; ``close()`` is safe at any point."""

    def __init__(self, size: int = 256 << 20) -> None:
        os.chmod(FREEZE_ROOT, 0o711)  # 0700 from mkdtemp: the database users must traverse it
        self.root = Path(tempfile.mkdtemp(prefix="qvm-", dir=FREEZE_ROOT))
        os.chmod(self.root, 0o711)  # the database users must reach run/ and mnt/
        self.vm, self.fuse, self.run = self.root / "vm", self.root / "fuse", self.root / "run"
        self.mnt = {name: self.root / "mnt" / name for name in DISKS}
        for d in (self.fuse, self.run, *self.mnt.values()):
            d.mkdir(parents=True)
        os.chmod(self.run, 0o711)
        os.chmod(self.root / "mnt", 0o711)
        self.size = size
        self.serve_proc: subprocess.Popen[bytes] | None = None
        self.pg = LabPostgres(self.mnt["data"] / "pg", self.run / "pg")
        self.maria = SplitMaria(self.mnt["data"] / "mysql", self.run / "mysql", self.binlog_dir)
        self.tablespace = self.mnt["space"] / "pgts"

    @property
    def binlog_dir(self) -> Path:
        return self.mnt["wal"] / "binlog"

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
        create_tables(self)  # type: ignore[arg-type]  # the load helpers read pg and maria
        self.pg.sql("ALTER TABLE demo_rows SET TABLESPACE space")  # its index stays on disk 1

    def _wal_to_disk_2(self) -> None:
        """``pg_wal`` moved to disk 2 and linked from the data directory (initdb --waldir)."""
        wal = self.mnt["wal"] / "pg_wal"
        shutil.move(str(self.pg.datadir / "pg_wal"), wal)
        chown_tree(wal, self.pg.owner)
        os.symlink(wal, self.pg.datadir / "pg_wal")
        if self.pg.owner is not None:
            os.lchown(self.pg.datadir / "pg_wal", *self.pg.owner)

    def agent_config(self, mounts: list[str]) -> dict[str, Any]:
        """The agent's configuration: both databases and the filesystems of ``mounts``."""
        return {
            "freeze": {"ceiling_seconds": 30, "timeout_seconds": 20},
            "filesystems": {"mounts": [str(self.mnt[m]) for m in mounts]},
            "postgres": [{"name": "vm", "dsn": self.pg.dsn}],
            "mysql": [{"name": "vm", "unix_socket": self.maria.socket, "user": "root"}],
        }

    def serve(self) -> None:
        """``quiesce-host serve VM --fuse fuse/``; wait for every disk's file."""
        cmd = [console_script("quiesce-host"), "serve", str(self.vm), "--fuse", str(self.fuse)]
        self.serve_proc = spawn(cmd, self.run / "serve.log")
        end = time.monotonic() + 30
        while not all(self.file(n).exists() for n in DISKS):
            if self.serve_proc.poll() is not None or time.monotonic() > end:
                log = (self.run / "serve.log").read_text(errors="replace")
                raise AssertionError(f"quiesce-host serve did not come up:\n{log}")
            time.sleep(0.05)

    def stop_serve(self) -> None:
        proc, self.serve_proc = self.serve_proc, None
        stop(proc)
        if os.path.ismount(self.fuse):
            run(["fusermount3", "-u", "-z", str(self.fuse)], timeout=30, check=False)

    def mount(self) -> None:
        for name in DISKS:
            run(["mount", "-o", "loop", str(self.file(name)), str(self.mnt[name])], timeout=60)

    def umount(self, lazy: bool = False) -> None:
        for name in reversed(DISKS):
            if os.path.ismount(self.mnt[name]):
                run(["umount", *(["-l"] if lazy else []), str(self.mnt[name])], timeout=120)

    # -- the revert ------------------------------------------------------------------------
    def take_down(self) -> None:
        """Databases stopped, filesystems unmounted, the server stopped: the VM is free."""
        self.pg.stop()
        self.maria.stop()
        self.umount()
        self.stop_serve()

    def bring_up(self) -> None:
        """Serve the VM again, mount its disks, start both databases from what is on them."""
        self.serve()
        self.mount()
        self.pg.drop_stale_pid()  # the snapshot was taken while PostgreSQL ran
        self.pg.start()
        self.maria.start()

    def close(self) -> None:
        for mnt in self.mnt.values():  # EINVAL when not frozen: fine
            subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True, timeout=10)
        for step in (lambda: self.pg.stop("immediate"), self.maria.stop):
            try:
                step()
            except Exception as err:  # noqa: BLE001 - keep taking the rest down
                print(f"cleanup: {err}")
        self.umount(lazy=True)
        self.stop_serve()
        shutil.rmtree(self.root, ignore_errors=True)
