"""Private, throw-away PostgreSQL and MariaDB servers for the integration tests and benchmarks.

The recipe (initdb, postgresql.conf, the mariadbd command line, start and stop, the system
users) is the lab's, host/lab/databases.py; this module adds what only the tests need.
Each server lives in a temp dir of its own (data directory, Unix socket, log), listens on a
Unix socket only, and is stopped by whoever started it. When the tests run as root the servers
run as the unprivileged ``postgres`` / ``mysql`` system users (created by the Debian
packages); otherwise as the current user. ``initdb`` and ``mariadb-install-db`` run once per
process; every further server starts from a copy of that template, in a second or two. A
server that fails to start raises RuntimeError.

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
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common.deadline import Deadline
from hooks.base import Operation
from hooks.kernel import freeze_path, thaw_path
from hooks.mysql.settings import MysqlSettings
from host.lab.databases import LabError, LabMaria, LabPostgres, chown_tree, pg_bindirs, server_owner
from host.lab.databases import mariadbd_path as mariadbd_path  # for the conftest's skips
from host.lab.databases import pg_bindir as pg_bindir
from tests.helpers.env import REPO, need

IS_ROOT = os.geteuid() == 0
PG_ENV = "QUIESCE_TEST_PG_DSN"
MYSQL_ENV = "QUIESCE_TEST_MYSQL_SOCKET"


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


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a data directory keeping ownership and modes (cp -a); reads only."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=300)


# --------------------------------------------------------------------------------------------
# PostgreSQL


# The versions the writer claims and the tests run it on (docs/databases.md): 14, the last
# with pg_start_backup/pg_stop_backup; 15, Debian 12's; the newest. 14 and 18 come from
# scripts/fetch-postgresql (PyPI wheels of server binaries) into PG_CACHE.
PG_VERSIONS = (14, 15, 18)
PG_CACHE = REPO / ".cache" / "postgresql"

_PG_TEMPLATES: dict[Path, Path] = {}  # bin dir -> its template data directory


def pg_servers() -> dict[int, Path]:
    """Every PostgreSQL here by major version: Debian's and those in PG_CACHE."""
    return pg_bindirs(sorted(PG_CACHE.glob("*/bin")))


def pg_version_bindir(version: int) -> Path:
    """The bin directory of ``version``; skips (fails in CI) when it is not here."""
    found = pg_servers()
    need(
        version in found,
        f"PostgreSQL {version} is not here (found: {sorted(found) or 'none'}); scripts/setup "
        "installs Debian's and runs scripts/fetch-postgresql for 14 and 18",
    )
    return found[version]


def _pg_template(bindir: Path | None) -> Path:
    """initdb once per process and server version; servers start from copies of it."""
    key = bindir or pg_bindir()
    if key is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup installs it)")
    if key not in _PG_TEMPLATES:
        base = Path(tempfile.mkdtemp(prefix="qa-pgtpl-"))
        chown_tree(base, server_owner("postgres"))
        LabPostgres(base / "data", base, bindir=key).initdb(sync=False)
        _PG_TEMPLATES[key] = base / "data"
        atexit.register(shutil.rmtree, base, True)
    return _PG_TEMPLATES[key]


class PgServer(LabPostgres):
    """A private PostgreSQL cluster on a Unix socket in its own temp dir (the lab's recipe;
    WAL archived into ``archive_dir`` when ``archive``). Its failures raise RuntimeError."""

    external = False
    archive_dir: Path  # always set here, archiving on or off

    def __init__(
        self,
        datadir: Path | None = None,
        *,
        archive: bool = True,
        source: Path | None = None,
        extra_conf: str = "",
        version: int | None = None,
    ) -> None:
        """Make a cluster at ``datadir`` (default: in the temp dir) from the template, or from
        a copy of ``source`` (a data directory copied while frozen, to restore), with the
        server of ``version`` (default: Debian's newest; see PG_VERSIONS). Not started."""
        bindir = pg_version_bindir(version) if version is not None else None
        self.base = Path(tempfile.mkdtemp(prefix="qa-pg-"))
        super().__init__(
            datadir if datadir is not None else self.base / "data",
            self.base / "sock",
            archive_dir=self.base / "archive",
            bindir=bindir,
        )
        self.sockdir = self.rundir
        self.sockdir.mkdir()
        self.archive_dir.mkdir()
        _traversable(self.datadir.parent)
        copy_tree(source if source is not None else _pg_template(bindir), self.datadir)
        self.drop_stale_pid()
        chown_tree(self.base, self.owner)
        chown_tree(self.datadir, self.owner)
        os.chmod(self.datadir, 0o700)
        self.configure(archive=archive, extra=extra_conf)

    def start(self, timeout: float = 60) -> PgServer:
        try:
            super().start(timeout)
        except LabError as err:  # the tests expect a failed start as RuntimeError
            raise RuntimeError(str(err)) from err
        return self

    def stop(self, mode: str = "fast") -> None:
        try:
            super().stop(mode)
        except LabError:  # a server that cannot be stopped is the test's finding, not ours
            self.running = False

    def postmaster_pid(self) -> int:
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
        if not str(self.datadir).startswith(str(self.base)):
            shutil.rmtree(self.datadir, ignore_errors=True)


class ExternalPg(PgServer):
    """A server someone else runs (QUIESCE_TEST_PG_DSN): we only connect to it."""

    external = True

    def __init__(self, dsn: str) -> None:  # noqa: D107 - no files of ours
        self._dsn = dsn
        self.datadir = None  # type: ignore[assignment]
        self.running = False

    @property
    def dsn(self) -> str:
        return self._dsn

    def start(self, timeout: float = 60) -> PgServer:
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
        base = Path(tempfile.mkdtemp(prefix="qa-mytpl-"))
        LabMaria(base / "data", base).init()
        _MARIA_TEMPLATE = base / "data"
        atexit.register(shutil.rmtree, base, True)
    return _MARIA_TEMPLATE


class MariaServer(LabMaria):
    """A private MariaDB server on a Unix socket, no networking, in its own temp dir (the
    lab's recipe). Its failures raise RuntimeError."""

    external = False

    def __init__(
        self, datadir: Path | None = None, *, binlog: bool = True, source: Path | None = None
    ) -> None:
        """Make a server at ``datadir`` (default: in the temp dir) from the template, or from a
        copy of ``source`` (a data directory copied while frozen, to restore). Not started."""
        self.base = Path(tempfile.mkdtemp(prefix="qa-my-"))
        super().__init__(
            datadir if datadir is not None else self.base / "data", self.base, binlog=binlog
        )
        _traversable(self.datadir.parent)
        copy_tree(source if source is not None else _maria_template(), self.datadir)
        for stale in glob.glob(str(self.datadir / "*.pid")):
            os.unlink(stale)
        chown_tree(self.base, self.owner)
        chown_tree(self.datadir, self.owner)

    def start(self, timeout: float = 60) -> MariaServer:
        try:
            super().start(timeout)
        except LabError as err:  # the tests expect a failed start as RuntimeError
            raise RuntimeError(str(err)) from err
        return self

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
    global _MARIA_TEMPLATE
    for tpl in (*_PG_TEMPLATES.values(), _MARIA_TEMPLATE):
        if tpl is not None:
            shutil.rmtree(tpl.parent, ignore_errors=True)
    _PG_TEMPLATES.clear()
    _MARIA_TEMPLATE = None


class Play:
    """Plays the state machine for one writer: prepare -> freeze, then thaw -> finish or abort,
    with one Operation and Deadline; a failed freeze is rolled back with abort, as the agent
    does."""

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
        """The release, then the work after it (the agent does that once every writer has
        released); the artifacts."""
        self.writer.thaw(self.op)
        self.writer.finish(self.op)
        return dict(self.writer.artifacts())

    def abort(self) -> None:
        self.writer.abort(self.op)


def fsfreeze(mountpoint: str, freeze: bool) -> None:
    """Freeze or thaw a filesystem THIS TEST made (refused anywhere else)."""
    if freeze:
        freeze_path(mountpoint)  # refuses anything outside QUIESCE_FREEZE_ONLY_UNDER
    else:
        thaw_path(mountpoint)
