"""Private, throw-away PostgreSQL and MariaDB servers for the integration tests.

Each server lives in a temp dir of its own (data directory, Unix socket, log), listens on a
Unix socket only, and is stopped by whoever started it. When the tests run as root the servers
run as the unprivileged ``postgres`` / ``mysql`` system users (created by the Debian
packages); otherwise as the current user. ``initdb`` and ``mariadb-install-db`` run once per
process; every further server starts from a copy of that template, in a second or two.

External servers (a container-based CI): set

    QUIESCE_TEST_PG_DSN="host=/run/postgresql user=postgres dbname=postgres"
    QUIESCE_TEST_MYSQL_SOCKET=/run/mysqld/mysqld.sock   (user root, no password; or set
                                                        QUIESCE_TEST_MYSQL_USER / _PASSWORD)

and the session-scoped servers become those. The tests that need the data directory itself
(restore from a frozen copy, SIGKILL of the server) skip with a reason, since an external
server's files are not ours to copy.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from common.deadline import Deadline
from hooks.base import Operation
from hooks.kernel import freeze_path, thaw_path
from hooks.mysql.settings import MysqlSettings

IS_ROOT = os.geteuid() == 0
PG_ENV = "QUIESCE_TEST_PG_DSN"
MYSQL_ENV = "QUIESCE_TEST_MYSQL_SOCKET"


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def mariadbd_path() -> str | None:
    return (
        shutil.which("mariadbd")
        or (os.path.exists("/usr/sbin/mariadbd") and "/usr/sbin/mariadbd")
        or None
    )


def _owner(user: str) -> tuple[int, int] | None:
    """(uid, gid) the server runs as: ``user`` when we are root, else None (ourselves)."""
    if not IS_ROOT:
        return None
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def _traversable(path: Path) -> None:
    """Let an unprivileged server reach ``path``: add o+x to our own temp dirs above it."""
    if not IS_ROOT:
        return
    for parent in [path, *path.parents]:
        if str(parent) in ("/", "/tmp") or not str(parent).startswith("/tmp/"):
            continue
        st = parent.stat()
        if st.st_uid == 0:
            os.chmod(parent, (st.st_mode & 0o7777) | 0o011)


def _chown_tree(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, *owner)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), *owner)


def _run(
    cmd: list[str], owner: tuple[int, int] | None, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as ``owner``; on failure raise with its output (setup errors must be loud)."""
    if owner is not None:
        kw.update(user=owner[0], group=owner[1], extra_groups=[])
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd="/",
        **kw,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a data directory keeping ownership and modes (cp -a); reads only."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=300)


# --------------------------------------------------------------------------------------------
# PostgreSQL


_PG_TEMPLATE: Path | None = None


def _pg_template() -> Path:
    """initdb once per process; servers start from copies of it."""
    global _PG_TEMPLATE
    if _PG_TEMPLATE is None:
        bindir = pg_bindir()
        assert bindir is not None
        owner = _owner("postgres")
        base = Path(tempfile.mkdtemp(prefix="qa-pgtpl-"))
        _chown_tree(base, owner)
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(base / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            owner,
        )
        _PG_TEMPLATE = base / "data"
        atexit.register(shutil.rmtree, base, True)
    return _PG_TEMPLATE


class PgServer:
    """A private PostgreSQL cluster on a Unix socket in its own temp dir."""

    external = False

    def __init__(
        self,
        datadir: Path | None = None,
        *,
        archive: bool = True,
        source: Path | None = None,
        extra_conf: str = "",
    ) -> None:
        """Make a cluster at ``datadir`` (default: in the temp dir) from the template, or from
        a copy of ``source`` (a data directory copied while frozen, to restore). Not started."""
        bindir = pg_bindir()
        assert bindir is not None, "PostgreSQL is not installed"
        self.bindir = bindir
        self.owner = _owner("postgres")
        self.base = Path(tempfile.mkdtemp(prefix="qa-pg-"))
        self.sockdir = self.base / "sock"
        self.archive_dir = self.base / "archive"
        self.log = self.base / "server.log"
        self.sockdir.mkdir()
        self.archive_dir.mkdir()
        self.datadir = datadir if datadir is not None else self.base / "data"
        _traversable(self.datadir.parent)
        copy_tree(source if source is not None else _pg_template(), self.datadir)
        for stale in ("postmaster.pid", "postmaster.opts"):
            (self.datadir / stale).unlink(missing_ok=True)
        _chown_tree(self.base, self.owner)
        _chown_tree(self.datadir, self.owner)
        os.chmod(self.datadir, 0o700)
        self.configure(archive=archive, extra=extra_conf)
        self.started = False

    def configure(self, *, archive: bool, extra: str = "") -> None:
        """Append our settings to postgresql.conf (later lines win over earlier ones)."""
        arch = (
            f"'test ! -f {self.archive_dir}/%f && cp %p {self.archive_dir}/%f'" if archive else "''"
        )
        conf = f"""
# quiesce-agent tests
listen_addresses = ''
unix_socket_directories = '{self.sockdir}'
port = 5432
wal_level = replica
max_wal_senders = 3
shared_buffers = 32MB
max_connections = 40
archive_mode = {"on" if archive else "off"}
archive_command = {arch}
log_min_messages = warning
{extra}
"""
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(conf)

    @property
    def dsn(self) -> str:
        return f"host={self.sockdir} port=5432 user=postgres dbname=postgres"

    def start(self) -> PgServer:
        _run(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.datadir),
                "-l",
                str(self.log),
            ],
            self.owner,
            timeout=90,
        )
        self.started = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            subprocess.run(
                [
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-w",
                    "-t",
                    "30",
                    "-m",
                    mode,
                    "-D",
                    str(self.datadir),
                ],
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                cwd="/",
                **(
                    {"user": self.owner[0], "group": self.owner[1], "extra_groups": []}
                    if self.owner
                    else {}
                ),
            )
            self.started = False

    def postmaster_pid(self) -> int:
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
        if not str(self.datadir).startswith(str(self.base)):
            shutil.rmtree(self.datadir, ignore_errors=True)

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=10, **kw)

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement on a fresh autocommit connection; rows if it returns any."""
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class ExternalPg(PgServer):
    """A server someone else runs (QUIESCE_TEST_PG_DSN): we only connect to it."""

    external = True

    def __init__(self, dsn: str) -> None:  # noqa: D107 - no files of ours
        self._dsn = dsn
        self.datadir = None  # type: ignore[assignment]
        self.started = False

    @property
    def dsn(self) -> str:
        return self._dsn

    def start(self) -> PgServer:
        return self

    def stop(self, mode: str = "fast") -> None:
        pass

    def remove(self) -> None:
        pass

    def log_text(self) -> str:
        return ""


# --------------------------------------------------------------------------------------------
# MariaDB


_MARIA_TEMPLATE: Path | None = None


def _maria_template() -> Path:
    """mariadb-install-db once per process; servers start from copies of it."""
    global _MARIA_TEMPLATE
    if _MARIA_TEMPLATE is None:
        owner = _owner("mysql")
        base = Path(tempfile.mkdtemp(prefix="qa-mytpl-"))
        _chown_tree(base, owner)
        cmd = [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={base / 'data'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        if IS_ROOT:
            cmd.append("--user=mysql")
        _run(cmd, None)
        _MARIA_TEMPLATE = base / "data"
        atexit.register(shutil.rmtree, base, True)
    return _MARIA_TEMPLATE


class MariaServer:
    """A private MariaDB server on a Unix socket, no networking, in its own temp dir."""

    external = False

    def __init__(
        self, datadir: Path | None = None, *, binlog: bool = True, source: Path | None = None
    ) -> None:
        """Make a server at ``datadir`` (default: in the temp dir) from the template, or from a
        copy of ``source`` (a data directory copied while frozen, to restore). Not started."""
        self.owner = _owner("mysql")
        self.base = Path(tempfile.mkdtemp(prefix="qa-my-"))
        self.socket = str(self.base / "mysqld.sock")
        self.log = self.base / "error.log"
        self.datadir = datadir if datadir is not None else self.base / "data"
        self.binlog = binlog
        _traversable(self.datadir.parent)
        copy_tree(source if source is not None else _maria_template(), self.datadir)
        for stale in glob.glob(str(self.datadir / "*.pid")):
            os.unlink(stale)
        _chown_tree(self.base, self.owner)
        _chown_tree(self.datadir, self.owner)
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = "root"
        self.password = ""

    def command(self) -> list[str]:
        cmd = [
            mariadbd_path() or "mariadbd",
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.base / 'mysqld.pid'}",
            f"--log-error={self.log}",
            "--skip-networking",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=1",
            "--max-connections=60",
            "--skip-log-bin",
        ]
        if self.binlog:
            cmd[-1:] = [
                "--log-bin=binlog",
                "--server-id=1",
                "--binlog-format=ROW",
                "--sync-binlog=1",
            ]
        if IS_ROOT:
            cmd.append("--user=mysql")
        return cmd

    def start(self, timeout: float = 60) -> MariaServer:
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
        )
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited ({self.proc.returncode}):\n" + self.log_text()[-3000:]
                )
            try:
                self.connect().close()
                return self
            except pymysql.err.OperationalError:
                if time.monotonic() > end:
                    self.kill()
                    raise RuntimeError(
                        "mariadbd did not accept connections in time:\n" + self.log_text()[-3000:]
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)
        if not str(self.datadir).startswith(str(self.base)):
            shutil.rmtree(self.datadir, ignore_errors=True)

    def connect(self, **kw: Any) -> pymysql.connections.Connection[Any]:
        kw.setdefault("connect_timeout", 5)
        return pymysql.connect(
            unix_socket=self.socket, user=self.user, password=self.password, autocommit=True, **kw
        )

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def writer_config(self, **over: Any) -> MysqlSettings:
        """The MySQL writer's settings, pointing at this server."""
        kw: dict[str, Any] = {"name": "test", "unix_socket": self.socket, "user": self.user}
        kw.update(over)
        return MysqlSettings(**kw)


class ExternalMaria(MariaServer):
    """A server someone else runs (QUIESCE_TEST_MYSQL_SOCKET): we only connect to it."""

    external = True

    def __init__(self, socket: str) -> None:  # noqa: D107 - no files of ours
        self.socket = socket
        self.datadir = None  # type: ignore[assignment]
        self.proc = None
        self.binlog = True
        self.user = os.environ.get("QUIESCE_TEST_MYSQL_USER", "root")
        self.password = os.environ.get("QUIESCE_TEST_MYSQL_PASSWORD", "")

    def start(self, timeout: float = 60) -> MariaServer:
        return self

    def stop(self) -> None:
        pass

    def kill(self) -> None:
        pass

    def remove(self) -> None:
        pass

    def log_text(self) -> str:
        return ""


def remove_templates() -> None:
    """Delete the per-process initdb / mariadb-install-db templates (end of the session)."""
    global _PG_TEMPLATE, _MARIA_TEMPLATE
    for tpl in (_PG_TEMPLATE, _MARIA_TEMPLATE):
        if tpl is not None:
            shutil.rmtree(tpl.parent, ignore_errors=True)
    _PG_TEMPLATE = _MARIA_TEMPLATE = None


class Play:
    """Plays the state machine for one writer: prepare -> freeze, then thaw or abort, with
    one Operation and Deadline; a failed freeze is rolled back with abort, as the agent does."""

    def __init__(self, writer: Any, label: str = "test", budget: float = 30.0) -> None:
        self.writer = writer
        self.messages: list[str] = []
        self.op = Operation(
            label, Deadline(budget), sink=lambda who, msg: self.messages.append(f"{who}: {msg}")
        )

    def freeze(self) -> Play:
        try:
            self.writer.prepare(self.op)
            self.writer.freeze(self.op)
        except BaseException:
            self.writer.abort(self.op)
            raise
        return self

    def thaw(self) -> dict[str, Any]:
        self.writer.thaw(self.op)
        return dict(self.writer.artifacts())

    def abort(self) -> None:
        self.writer.abort(self.op)


def fsfreeze(mountpoint: str, freeze: bool) -> None:
    """Freeze or thaw a filesystem THIS TEST made (refused anywhere else)."""
    if freeze:
        freeze_path(mountpoint)  # refuses anything outside QUIESCE_FREEZE_ONLY_UNDER
    else:
        thaw_path(mountpoint)
