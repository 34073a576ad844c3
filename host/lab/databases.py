"""Private, throw-away PostgreSQL and MariaDB servers: the one recipe, for the demo lab, the
benchmarks and the tests (tests/helpers/dbservers.py builds on it).

A server is a data directory and a run directory (its Unix socket, pid file and log; no TCP).
``init()`` makes and configures a new data directory (initdb, mariadb-install-db); then
``start()`` / ``stop()`` as often as needed on the same data directory, which in the lab sits
on a disk that is unmounted, reverted and mounted again. Options: PostgreSQL's WAL archiving
into ``archive_dir`` and extra postgresql.conf lines, MariaDB's binary log. As root the
servers run as the ``postgres`` / ``mysql`` system users of the Debian packages, and their
directories are chowned to them. Every child runs with a timeout and in its own session, so
a Ctrl-C at the terminal reaches the demo, which stops them in order, and not the servers.

Raises LabError with the tool's own output when a step fails (setup errors must be loud).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from common.errors import QuiesceError

Owner = tuple[int, int]  # (uid, gid)


class LabError(QuiesceError):
    """A lab step failed; the message carries the tool's output."""

    code = "LabError"
    exit_code = 2


PG_BINDIRS_ENV = "QUIESCE_PG_BINDIRS"  # more servers' bin directories, ':'-separated


def pg_bindir(version: int | None = None, extra: Iterable[Path] = ()) -> Path | None:
    """The bin directory of PostgreSQL ``version`` (see pg_bindirs), or None if it is not
    here. Without a version: the newest installed the Debian way (the lab's default), else
    the one whose initdb is on PATH."""
    if version is not None:
        return pg_bindirs(extra).get(version)
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def pg_bindirs(extra: Iterable[Path] = ()) -> dict[int, Path]:
    """Every PostgreSQL server here, by major version: Debian's /usr/lib/postgresql/N/bin,
    then the directories in $QUIESCE_PG_BINDIRS, then ``extra`` (the tests add the ones
    scripts/fetch-postgresql unpacked), then initdb's on PATH; the first of a version wins."""
    found: dict[int, Path] = {}
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        major = initdb.split("/")[4]
        if major.isdigit():
            found.setdefault(int(major), Path(initdb).parent)
    listed = [Path(d) for d in os.environ.get(PG_BINDIRS_ENV, "").split(":") if d]
    on_path = shutil.which("initdb")
    for bindir in [*listed, *extra, *([Path(on_path).parent] if on_path else [])]:
        major_of = _pg_major(bindir)
        if major_of is not None:
            found.setdefault(major_of, bindir)
    return dict(sorted(found.items()))


def _pg_major(bindir: Path) -> int | None:
    """The major version of the server in ``bindir`` (``postgres --version``), or None."""
    if not (bindir / "postgres").is_file():
        return None
    try:
        out = run([str(bindir / "postgres"), "--version"], timeout=10).stdout
    except LabError:
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(match.group(1)) if match else None


def mariadbd_path() -> str | None:
    if shutil.which("mariadbd"):
        return shutil.which("mariadbd")
    return "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None


def server_owner(user: str) -> Owner | None:
    """Who a server runs as: the system ``user`` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def chown_tree(path: Path, owner: Owner | None) -> None:
    """Give ``path`` and everything under it to ``owner`` (nothing to do for None)."""
    if owner is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, *owner)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), *owner)


def server_env(rundir: Path) -> dict[str, str]:
    """The environment of a server and its tools: ours, with TMPDIR in the server's own run
    directory (a TMPDIR of ours, private to root, would stop mariadbd creating its files)."""
    return dict(os.environ, TMPDIR=str(rundir))


def run(
    cmd: list[str],
    owner: Owner | None = None,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (as ``owner`` when given) in its own session, within ``timeout`` seconds.

    Raises LabError when it runs out of time, or (``check``) fails; the message has the
    command and the end of its output.
    """
    kw: dict[str, Any] = {} if env is None else {"env": env}
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
    if check and proc.returncode != 0:
        output = "\n".join(t[-2000:].strip() for t in (proc.stdout, proc.stderr) if t.strip())
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return proc


def _tail(path: Path, chars: int | None = None) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:] if chars else text


class PgStatements:
    """``sql()`` over ``connect()``: what the load and the verdicts ask of a PostgreSQL, the
    lab's own (LabPostgres) or one reached through a forwarded port (host/lab/forwarded.py)."""

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        raise NotImplementedError

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement on a fresh autocommit connection; its rows if it returns any."""
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


class MariaStatements:
    """``sql()`` over ``connect()``, for a MariaDB: the lab's own or a forwarded one."""

    def connect(self, **kw: Any) -> pymysql.connections.Connection[Any]:
        raise NotImplementedError

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement on a fresh autocommit connection; its rows."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall())
        finally:
            conn.close()


class LabPostgres(PgStatements):
    """A PostgreSQL cluster with its data in ``datadir`` and its socket and log in ``rundir``;
    WAL archived into ``archive_dir`` when one is given."""

    def __init__(
        self,
        datadir: Path,
        rundir: Path,
        *,
        archive_dir: Path | None = None,
        extra_conf: str = "",
        bindir: Path | None = None,
    ) -> None:
        """``bindir``: the server's bin directory (pg_bindir(VERSION)); default pg_bindir()."""
        bindir = bindir or pg_bindir()
        if bindir is None:
            raise LabError("PostgreSQL is not installed (scripts/setup installs it)")
        self.bindir = bindir
        self.datadir = datadir
        self.rundir = rundir
        self.archive_dir = archive_dir
        self.extra_conf = extra_conf
        self.log = rundir / "postgres.log"
        self.owner = server_owner("postgres")
        self.running = False

    @property
    def dsn(self) -> str:
        return f"host={self.rundir} port=5432 user=postgres dbname=postgres"

    def init(self) -> LabPostgres:
        """initdb, then the recipe's settings."""
        self.initdb()
        self.configure(archive=self.archive_dir is not None, extra=self.extra_conf)
        return self

    def initdb(self, *, sync: bool = True) -> None:
        """A new cluster in ``datadir`` (made if missing); ``sync=False`` skips its fsyncs."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(parents=True, exist_ok=True)
        chown_tree(self.rundir, self.owner)
        chown_tree(self.datadir, self.owner)
        os.chmod(self.datadir, 0o700)
        cmd = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres"]
        cmd += ["--auth=trust", "-E", "UTF8", "--locale=C", *([] if sync else ["--no-sync"])]
        run(cmd, self.owner, env=server_env(self.rundir))

    def configure(self, *, archive: bool, extra: str = "") -> None:
        """Append the recipe's settings to postgresql.conf (later lines win over earlier ones):
        Unix socket in ``rundir`` only, WAL for backups, archiving on or off, then ``extra``."""
        if archive and self.archive_dir is None:
            raise LabError("WAL archiving needs an archive_dir")
        dest = self.archive_dir
        command = f"'test ! -f {dest}/%f && cp %p {dest}/%f'" if archive else "''"
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(
                "\n# quiesce-agent lab\nlisten_addresses = ''\n"
                f"unix_socket_directories = '{self.rundir}'\nport = 5432\n"
                "wal_level = replica\nmax_wal_senders = 3\nshared_buffers = 32MB\n"
                "max_connections = 40\n"
                f"archive_mode = {'on' if archive else 'off'}\narchive_command = {command}\n"
                f"log_min_messages = warning\n{extra}\n"
            )

    def drop_stale_pid(self) -> None:
        """Remove the pid files of the server that ran when ``datadir`` was copied or
        snapshotted (that server is not running: it was stopped, or ran elsewhere)."""
        for stale in ("postmaster.pid", "postmaster.opts"):
            (self.datadir / stale).unlink(missing_ok=True)

    def _pg_ctl(self, *args: str, timeout: float) -> None:
        cmd = [str(self.bindir / "pg_ctl"), *args, "-D", str(self.datadir)]
        run(cmd, self.owner, timeout, env=server_env(self.rundir))

    def start(self, timeout: float = 120) -> LabPostgres:
        """Start it and wait (``timeout`` seconds at most) until it accepts connections."""
        self._pg_ctl("start", "-w", "-t", f"{timeout:g}", "-l", str(self.log), timeout=timeout + 30)
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``mode`` as pg_ctl's ``-m``); an immediate stop if that fails."""
        if not self.running:
            return
        try:
            self._pg_ctl("stop", "-w", "-t", "60", "-m", mode, timeout=90)
        except LabError:
            self._pg_ctl("stop", "-w", "-m", "immediate", timeout=60)
        self.running = False

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=10, **kw)

    def log_text(self) -> str:
        return _tail(self.log)

    def log_tail(self) -> str:
        return _tail(self.log, 3000)


class LabMaria(MariaStatements):
    """A MariaDB server with its data in ``datadir`` and socket, pid and log in ``rundir``; a
    binary log when ``binlog``."""

    def __init__(self, datadir: Path, rundir: Path, *, binlog: bool = True) -> None:
        binary = mariadbd_path()
        if binary is None:
            raise LabError("MariaDB is not installed (scripts/setup installs it)")
        self.binary = binary
        self.datadir = datadir
        self.rundir = rundir
        self.binlog = binlog
        self.socket = str(rundir / "mysqld.sock")
        self.log = rundir / "mariadb.log"
        self.owner = server_owner("mysql")
        self.user = "root"
        self.password = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def init(self) -> LabMaria:
        """mariadb-install-db into ``datadir`` (made if missing)."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(parents=True, exist_ok=True)
        chown_tree(self.rundir, self.owner)
        chown_tree(self.datadir, self.owner)
        cmd = ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}"]
        cmd += ["--auth-root-authentication-method=normal", "--skip-test-db"]
        cmd += ["--skip-name-resolve", *self._as_mysql()]
        run(cmd, env=server_env(self.rundir))
        return self

    def _as_mysql(self) -> list[str]:
        return [] if self.owner is None else ["--user=mysql"]

    def command(self) -> list[str]:
        """The mariadbd command line: Unix socket only, durable commits, binlog or not."""
        cmd = [self.binary, "--no-defaults", f"--datadir={self.datadir}"]
        cmd += [f"--socket={self.socket}", f"--pid-file={self.rundir / 'mysqld.pid'}"]
        cmd += [f"--log-error={self.log}", "--skip-networking", "--skip-name-resolve"]
        cmd += ["--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=1"]
        cmd += ["--max-connections=60"]
        if self.binlog:
            cmd += ["--log-bin=binlog", "--server-id=1", "--binlog-format=ROW", "--sync-binlog=1"]
        else:
            cmd += ["--skip-log-bin"]
        return cmd + self._as_mysql()

    def start(self, timeout: float = 120) -> LabMaria:
        """Start it and wait (``timeout`` seconds at most) until it accepts connections."""
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
            env=server_env(self.rundir),
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
        """SIGTERM and wait for it; SIGKILL if it has not stopped after 90 s."""
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
            unix_socket=self.socket, user=self.user, password=self.password, autocommit=True, **kw
        )

    def log_text(self) -> str:
        return _tail(self.log)

    def log_tail(self) -> str:
        return _tail(self.log, 3000)
