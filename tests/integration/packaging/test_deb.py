"""The Debian package: lintian-clean, and in a throw-away Debian 12 root it installs, the
agent runs from it on Debian's own drivers, an upgrade keeps the admin's agent.yaml, and a
purge leaves nothing behind.

The root is scripts/debian-root's tarball (mmdebstrap minbase with python3 and the
packages quiesce-agent depends on), unpacked per test into a temp dir; commands run in it
by chroot inside a private mount namespace (``unshare --mount``) that has its own /proc and
the database servers' socket folders bound in, so nothing is left mounted on this machine.
No systemd runs there: what postinst does without it (enable, no start) is checked; the
stop on prerm is for the VM lab's guest to show.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent import protocol
from tests.helpers.dbservers import MariaServer, PgServer
from tests.helpers.env import FREEZE_ROOT, REPO, need, need_root

pytestmark = [pytest.mark.deb, pytest.mark.root, pytest.mark.slow]

ROOT_TAR = REPO / ".cache" / "debian12-root.tar"
UNIT = "quiesce-agent.service"
ENV = {  # the chroot's environment: none of ours but the freeze safety net
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "QUIESCE_FREEZE_ONLY_UNDER": FREEZE_ROOT,
}
# what dpkg itself keeps about a package that was installed and purged again
DPKG_BOOKKEEPING = ("./var/log/dpkg.log", "./var/lib/dpkg/", "./var/cache/debconf/")


def _need_tools() -> None:
    need_root()
    for tool in ("dpkg-deb", "lintian", "unshare", "chroot"):
        need(shutil.which(tool) is not None, f"{tool} is missing (scripts/setup installs it)")
    need(ROOT_TAR.is_file(), f"no Debian 12 root at {ROOT_TAR} (scripts/debian-root makes it)")


def build(out: Path, version: str) -> Path:
    done = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), "--version", version, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def debs() -> Iterator[dict[str, Path]]:
    _need_tools()
    out = Path(tempfile.mkdtemp(prefix="qa-debs-"))
    yield {v: build(out, v) for v in ("0.1.0-1", "0.1.0-2")}
    shutil.rmtree(out, ignore_errors=True)


class Root:
    """A Debian 12 root in a temp dir, and the commands run in it."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="qa-deb-", dir="/tmp"))
        self.path = self.base / "root"
        self.path.mkdir()
        subprocess.run(["tar", "-xf", str(ROOT_TAR), "-C", str(self.path)], check=True, timeout=300)
        self.binds: dict[str, Path] = {}  # folder in the root -> folder here

    def bind(self, inside: str, here: Path) -> None:
        (self.path / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self.binds[inside] = here

    def command(self, *argv: str) -> list[str]:
        mounts = ['mount -t proc proc "$R/proc"']
        mounts += [f'mount --bind "{here}" "$R{inside}"' for inside, here in self.binds.items()]
        script = " && ".join(mounts) + ' && exec chroot "$R" "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*argv),
            env=dict(ENV, R=str(self.path)),
            capture_output=True,
            text=True,
            timeout=300,
            start_new_session=True,
        )
        if check:
            assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
        return done

    def install(self, deb: Path) -> subprocess.CompletedProcess[str]:
        shutil.copy(deb, self.path / "tmp" / deb.name)
        try:
            return self.run("dpkg", "-i", f"/tmp/{deb.name}")
        finally:
            (self.path / "tmp" / deb.name).unlink()

    def files(self) -> set[str]:
        """Every path in the root, as ./etc/..., but dpkg's own bookkeeping."""
        found = set()
        for folder, dirs, names in os.walk(self.path):
            rel = "." + folder[len(str(self.path)) :]
            for name in dirs + names:
                path = f"{rel}/{name}"
                if not path.startswith(DPKG_BOOKKEEPING):
                    found.add(path)
        return found

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def root(debs: dict[str, Path]) -> Iterator[Root]:
    made = Root()
    yield made
    made.remove()


def test_the_package_is_lintian_clean(debs: dict[str, Path]) -> None:
    done = subprocess.run(
        ["lintian", "--fail-on", "error,warning", str(debs["0.1.0-1"])],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    tags = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert done.returncode == 0 and tags == [], done.stdout + done.stderr


def test_install_upgrade_and_purge_in_a_debian_12_root(root: Root, debs: dict[str, Path]) -> None:
    before = root.files()
    root.install(debs["0.1.0-1"])
    p = root.path
    assert (p / "lib/systemd/system" / UNIT).is_file()
    assert "ExecStart=/usr/bin/quiesce-agent" in (p / "lib/systemd/system" / UNIT).read_text()
    assert (p / "usr/share/quiesce-agent/50-quiesce-agent-bridge").stat().st_mode & 0o111
    assert (p / "usr/share/quiesce-agent/quiesce-agent-fsfreeze-hook").stat().st_mode & 0o111
    # enabled, not started (no systemd runs here; postinst must not need it)
    assert (p / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    # byte-compiled at install, so the daemon never writes bytecode (nor has to compile)
    assert list((p / "usr/share/quiesce-agent/agent/__pycache__").glob("daemon.*.pyc"))
    # the unit's Documentation= exists
    unit = (p / "lib/systemd/system" / UNIT).read_text()
    for doc in unit.split("Documentation=")[1].split("\n")[0].split():
        if doc.startswith("file://"):
            assert (p / doc.removeprefix("file:///")).is_file(), doc
    assert "configuration is valid" in root.run("quiesce-agent", "check", check=False).stdout

    conf = p / "etc/quiesce-agent/agent.yaml"
    conf.write_text(conf.read_text() + "# the admin's own line\n")
    root.install(debs["0.1.0-2"])
    assert root.run("dpkg-query", "-W", "-f", "${Version}", "quiesce-agent").stdout == "0.1.0-2"
    assert conf.read_text().endswith("# the admin's own line\n")  # a conffile: never replaced
    assert (p / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()

    root.run("dpkg", "--remove", "quiesce-agent")
    assert not (p / "usr/share/quiesce-agent").exists()  # the .pyc files went with it
    assert conf.exists()  # remove keeps the configuration; purge does not
    root.run("dpkg", "--purge", "quiesce-agent")
    assert root.files() - before == set()
    assert before - root.files() == set()


def test_the_agent_runs_from_the_package_on_debians_drivers(
    root: Root, debs: dict[str, Path], pg_factory: object, maria_factory: object
) -> None:
    pg: PgServer = pg_factory(archive=True).start()  # type: ignore[operator]
    maria: MariaServer = maria_factory().start()  # type: ignore[operator]
    root.install(debs["0.1.0-1"])
    versions = root.run(
        "python3", "-c", "import psycopg, pymysql; print(psycopg.__version__, pymysql.__version__)"
    )
    assert versions.stdout.split() == ["3.1.7", "1.0.2"]
    root.bind("/run/pg", pg.rundir)
    root.bind("/run/maria", Path(maria.socket).parent)
    config = {
        "listen": {"unix": "/tmp/agent.sock"},
        "state_dir": "/tmp/state",
        "postgres": [{"name": "pg", "dsn": "host=/run/pg port=5432 user=postgres dbname=postgres"}],
        "mysql": [{"name": "db", "unix_socket": "/run/maria/mysqld.sock", "user": maria.user}],
    }
    (root.path / "tmp/agent.yaml").write_text(yaml.safe_dump(config))
    log = open(root.base / "agent.log", "wb")
    daemon = subprocess.Popen(
        root.command("quiesce-agent", "serve", "--config", "/tmp/agent.yaml"),
        env=dict(ENV, R=str(root.path)),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    sock = str(root.path / "tmp/agent.sock")
    try:
        client = protocol.Client(protocol.Endpoint("unix", path=sock))
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.1)
        with client:
            assert client.call("ping", {}, timeout=10)["pong"] is True
            frozen = client.call("freeze", {"label": "deb"}, timeout=60)
            assert [w["state"] for w in frozen["writers"]] == ["frozen", "frozen"]
            report = client.call("thaw", {}, timeout=60)
        assert report["consistency"] == "application", report
        by_name = {w["name"]: w for w in report["writers"]}
        assert "LABEL: deb" in by_name["postgres:pg"]["artifacts"]["backup_label"]
        assert by_name["mysql:db"]["state"] == "thawed"
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
        log.close()
    assert daemon.returncode == 0, (root.base / "agent.log").read_text()
