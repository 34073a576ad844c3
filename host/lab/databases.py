"""Private, throw-away PostgreSQL and MariaDB servers for the demo and the benchmark.

The same recipe as the test suite's servers (tests/dbservers.py), shaped for a lab whose data
directories sit on a disk that is unmounted, reverted and mounted again: ``init()`` once, then
``start()`` / ``stop()`` as often as needed on the same data directory. Unix sockets only, in a
run directory off the lab's disk; as root the servers run as the ``postgres`` / ``mysql``
system users of the Debian packages. Every child gets its own session, so a Ctrl-C at the
terminal reaches the demo, which stops them in order, and not the servers directly.

Raises LabError with the server's own output when a step fails (setup errors must be loud).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from common.errors import QuiesceError


class LabError(QuiesceError):
    """A lab step failed; the message carries the tool's output."""

    code = "LabError"
    exit_code = 2


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def mariadbd_path() -> str | None:
    if shutil.which("mariadbd"):
        return shutil.which("mariadbd")
    return "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None


def _owner(user: str) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def _chown_tree(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, *owner)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), *owner)


def _run(cmd: list[str], owner: tuple[int, int] | None, timeout: float = 120) -> str:
    kw: dict[str, Any] = {}
    if owner is not None:
        kw.update(user=owner[0], group=owner[1], extra_groups=[])
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )
    except subprocess.TimeoutExpired as err:
        raise LabError(f"{cmd[0]} did not finish within {timeout:g} s") from err
    if proc.returncode != 0:
        raise LabError(
            f"{' '.join(cmd[:2])} failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return str(proc.stdout)


class LabPostgres:
    """A PostgreSQL cluster with its data in ``datadir`` and its socket in ``rundir``."""

    def __init__(self, datadir: Path, rundir: Path) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise LabError("PostgreSQL is not installed (scripts/setup installs it)")
        self.bindir = bindir
        self.datadir = datadir
        self.rundir = rundir
        self.log = rundir / "postgres.log"
        self.owner = _owner("postgres")
        self.running = False

    @property
    def dsn(self) -> str:
        return f"host={self.rundir} port=5432 user=postgres dbname=postgres"

    def init(self) -> LabPostgres:
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(parents=True, exist_ok=True)
        _chown_tree(self.rundir, self.owner)
        _chown_tree(self.datadir, self.owner)
        os.chmod(self.datadir, 0o700)
        _run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            self.owner,
        )
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(
                f"\n# quiesce-agent lab\nlisten_addresses = ''\n"
                f"unix_socket_directories = '{self.rundir}'\nport = 5432\n"
                "wal_level = replica\nshared_buffers = 32MB\nmax_connections = 40\n"
                "log_min_messages = warning\n"
            )
        return self

    def start(self) -> LabPostgres:
        (self.datadir / "postmaster.pid").unlink(missing_ok=True)  # we stopped it ourselves
        _run(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "120",
                "-D",
                str(self.datadir),
                "-l",
                str(self.log),
            ],
            self.owner,
            timeout=150,
        )
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if not self.running:
            return
        try:
            _run(
                [
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-w",
                    "-t",
                    "60",
                    "-m",
                    mode,
                    "-D",
                    str(self.datadir),
                ],
                self.owner,
                timeout=90,
            )
        except LabError:
            _run(
                [
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-w",
                    "-m",
                    "immediate",
                    "-D",
                    str(self.datadir),
                ],
                self.owner,
                timeout=60,
            )
        self.running = False

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class LabMaria:
    """A MariaDB server with its data in ``datadir`` and socket, pid and log in ``rundir``."""

    def __init__(self, datadir: Path, rundir: Path) -> None:
        binary = mariadbd_path()
        if binary is None:
            raise LabError("MariaDB is not installed (scripts/setup installs it)")
        self.binary = binary
        self.datadir = datadir
        self.rundir = rundir
        self.socket = str(rundir / "mysqld.sock")
        self.log = rundir / "mariadb.log"
        self.owner = _owner("mysql")
        self.proc: subprocess.Popen[bytes] | None = None

    def init(self) -> LabMaria:
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(parents=True, exist_ok=True)
        _chown_tree(self.rundir, self.owner)
        _chown_tree(self.datadir, self.owner)
        cmd = [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        if self.owner is not None:
            cmd.append("--user=mysql")
        _run(cmd, None)
        return self

    def start(self, timeout: float = 120) -> LabMaria:
        cmd = [
            self.binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.rundir / 'mysqld.pid'}",
            f"--log-error={self.log}",
            "--skip-networking",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=1",
            "--max-connections=60",
            "--log-bin=binlog",
            "--server-id=1",
            "--binlog-format=ROW",
            "--sync-binlog=1",
        ]
        if self.owner is not None:
            cmd.append("--user=mysql")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
        )
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LabError(f"mariadbd exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.connect().close()
                return self
            except pymysql.err.OperationalError:
                if time.monotonic() > end:
                    self.stop()
                    raise LabError(
                        f"mariadbd did not accept connections within {timeout:g} s:"
                        f"\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def connect(self, **kw: Any) -> pymysql.connections.Connection[Any]:
        kw.setdefault("connect_timeout", 5)
        return pymysql.connect(
            unix_socket=self.socket, user="root", password="", autocommit=True, **kw
        )

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query)
                return list(cur.fetchall())
        finally:
            conn.close()

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""
