"""The VMware Tools / qemu-ga bridge against a real daemon and real databases.

The bridge is run the way each tool runs it: vmtoolsd runs every entry of backupScripts.d
in byte-wise order with ``freeze``, ``thaw`` to the same scripts in reverse, and
``freezeFail`` only to scripts whose freeze completed when a later one fails; qemu-ga runs
/etc/qemu/fsfreeze-hook, which runs each executable of fsfreeze-hook.d with ``freeze`` before
its FIFREEZE and ``thaw`` after its FITHAW, appending their output to its log. Both run with a
service's plain environment; the only additions are the bridge's documented settings
(QUIESCE_AGENT, QUIESCE_AGENT_SOCKET), which an installation puts in /etc/default.

The daemon also has the test's own loop-mounted filesystem configured: the bridge must leave
it alone (the tool freezes filesystems itself).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hooks.kernel import freeze_path, thaw_path
from tests.helpers.agentproc import AgentProcess
from tests.helpers.dbservers import MariaServer, PgServer
from tests.helpers.env import REPO
from tests.helpers.waiting import Background

pytestmark = [pytest.mark.pg, pytest.mark.mysql, pytest.mark.root]
BRIDGE = REPO / "backupScripts.d" / "50-quiesce-agent-bridge"
MASTER = REPO / "packaging" / "qemu-ga" / "quiesce-agent-fsfreeze-hook"
CLI = REPO / ".venv" / "bin" / "quiesce-agent"
IGNORED = (
    "~",
    ".bak",
    ".orig",
    ".rpmnew",
    ".rpmorig",
    ".rpmsave",
    ".sample",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-tmp",
    ".dpkg-dist",
    ".dpkg-bak",
    ".dpkg-backup",
    ".dpkg-remove",
)
RECORDER = '#!/bin/sh\necho "$1" >> {log}\n'


class Setup:
    """A daemon with postgres + mysql + scripts + (the test's) filesystems configured."""

    def __init__(
        self, root: Path, pg: PgServer, maria: MariaServer, fs: Any, ceiling: float = 20
    ) -> None:
        self.root, self.pg, self.maria, self.fs = root, pg, maria, fs
        self.table = f"bridge_{os.getpid()}_{int(time.monotonic() * 1000)}"
        maria.sql("CREATE DATABASE IF NOT EXISTS bridge")
        maria.sql(f"CREATE TABLE bridge.{self.table} (i INT PRIMARY KEY) ENGINE=InnoDB")
        scripts = root / "agent-scripts"
        scripts.mkdir()
        self.script_log = root / "agent-scripts.log"
        (scripts / "10-record").write_text(RECORDER.format(log=self.script_log))
        (scripts / "10-record").chmod(0o755)
        self.agent = AgentProcess(
            root,
            {
                "freeze": {"ceiling_seconds": ceiling, "timeout_seconds": min(ceiling, 10)},
                "scripts": {"dir": str(scripts), "legacy_dir": None},
                "filesystems": {"mounts": [fs.path]},
                "postgres": [{"name": "main", "dsn": pg.dsn}],
                "mysql": [
                    {
                        "name": "main",
                        "unix_socket": maria.socket,
                        "user": maria.user,
                        "lock": "backup_stage",
                        "lock_wait_timeout": 1,
                    }
                ],
            },
        ).start()
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C",
            "QUIESCE_AGENT": str(CLI),
            "QUIESCE_AGENT_SOCKET": self.agent.socket,
            "QUIESCE_BRIDGE_RECORD": str(root / "qemu-ga-bridge.json"),
        }

    def install(self, folder: str) -> Path:
        """Drop the bridge into a tool's folder, as the install instructions say."""
        d = self.root / folder
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(BRIDGE, d / BRIDGE.name)
        (d / BRIDGE.name).chmod(0o755)
        return d

    def run(self, script: Path, arg: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), arg],
            env=self.env,
            cwd="/",
            text=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=90,
        )

    # what a user would look at
    def status(self) -> dict[str, Any]:
        return self.agent.call("status")["return"]

    def pg_holders(self) -> int:
        return len(
            self.pg.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'quiesce-agent'")
        )

    def insert(self, i: int) -> Background:
        return Background(self.maria, f"INSERT INTO bridge.{self.table} VALUES ({i})")

    def scripts_saw(self) -> list[str]:
        return self.script_log.read_text().split() if self.script_log.exists() else []


@pytest.fixture
def setup(
    short_tmp: Path, pg: PgServer, maria: MariaServer, make_fs: Callable[..., Any]
) -> Iterator[Callable[..., Setup]]:
    if pg.external or maria.external:
        pytest.skip("the daemon tests use the private servers")
    made: list[Setup] = []

    def factory(**kw: Any) -> Setup:
        s = Setup(short_tmp, pg, maria, make_fs("ext4", 64), **kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.agent.stop()


def vmtoolsd(s: Setup, folder: Path, phase: str) -> list[tuple[str, int]]:
    """Run backupScripts.d as vmtoolsd does; return (script, exit code) in run order."""
    names = sorted(os.listdir(folder), key=os.fsencode)
    ran: list[tuple[str, int]] = []
    if phase == "freeze":
        done = []
        for name in names:
            rc = s.run(folder / name, "freeze").returncode
            ran.append((name, rc))
            if rc != 0:
                for prev in reversed(done):
                    rc = s.run(folder / prev, "freezeFail").returncode
                    ran.append((f"{prev} freezeFail", rc))
                break
            done.append(name)
    else:
        for name in reversed(names):
            ran.append((name, s.run(folder / name, "thaw").returncode))
    return ran


def fsfreeze_hook(s: Setup, folder: Path, phase: str, log: Path) -> int:
    """/etc/qemu/fsfreeze-hook: every executable file, not a backup, output to its log."""
    status = 0
    for path in sorted(folder.iterdir(), key=lambda p: os.fsencode(p.name)):
        if path.name.endswith(IGNORED) or not (path.is_file() and os.access(path, os.X_OK)):
            continue
        proc = s.run(path, phase)
        with open(log, "a") as f:
            f.write(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                f.write(f"{path} finished with status={proc.returncode}\n")
                status = 1
    return status


# -- VMware Tools ------------------------------------------------------------------------------


def test_vmware_freeze_holds_databases_not_filesystems_then_thaws(setup: Any) -> None:
    s = setup()
    folder = s.install("vmware-tools/backupScripts.d")
    assert vmtoolsd(s, folder, "freeze") == [(BRIDGE.name, 0)]

    st = s.status()
    assert st["state"] == "frozen" and st["label"].startswith("vmware-")
    held = {w["name"]: w["state"] for w in st["last_report"]["writers"]}
    assert held == {
        "scripts:10-record": "frozen",
        "mysql:main": "frozen",
        "postgres:main": "frozen",
    }
    insert = s.insert(1)
    time.sleep(0.5)
    assert insert.done_at is None and s.pg_holders() == 1
    # VMware's sync driver freezes the filesystems; ours must not be frozen yet
    freeze_path(s.fs.path)
    thaw_path(s.fs.path)

    assert vmtoolsd(s, folder, "thaw") == [(BRIDGE.name, 0)]
    assert insert.join() < 10 and insert.error is None
    assert s.pg_holders() == 0 and s.status()["state"] == "idle"
    report = s.status()["last_report"]
    pg_art = next(w for w in report["writers"] if w["name"] == "postgres:main")["artifacts"]
    my_art = next(w for w in report["writers"] if w["name"] == "mysql:main")["artifacts"]
    assert "LABEL: vmware-" in pg_art["backup_label"] and my_art["binlog_file"]
    assert s.scripts_saw() == ["freeze", "thaw"]


def test_vmware_freezefail_after_a_later_script_fails(setup: Any) -> None:
    s = setup()
    folder = s.install("vmware-tools/backupScripts.d")
    (folder / "90-fails").write_text('#!/bin/sh\n[ "$1" = freeze ] && exit 3\nexit 0\n')
    (folder / "90-fails").chmod(0o755)
    assert vmtoolsd(s, folder, "freeze") == [
        (BRIDGE.name, 0),
        ("90-fails", 3),
        (f"{BRIDGE.name} freezeFail", 0),
    ]
    assert s.status()["state"] == "idle" and s.pg_holders() == 0
    assert s.insert(2).join() < 2
    assert s.scripts_saw() == ["freeze", "freezeFail"]
    # the spelling of the docs works too, and nothing frozen is no error
    assert s.run(folder / BRIDGE.name, "freezefail").returncode == 0


def test_failed_freeze_exits_nonzero_and_leaves_nothing_held(setup: Any) -> None:
    s = setup()
    folder = s.install("vmware-tools/backupScripts.d")
    other = s.maria.connect()
    try:
        other.cursor().execute("BACKUP STAGE START")  # a mariabackup holds the backup lock
        proc = s.run(folder / BRIDGE.name, "freeze")
        assert proc.returncode == 4, proc.stderr
        assert "mysql:main" in proc.stderr and "BACKUP STAGE" in proc.stderr
        assert "nothing stays frozen" in proc.stderr
    finally:
        other.close()
    assert s.status()["state"] == "idle" and s.pg_holders() == 0
    # BACKUP STAGE START is prepare's (it blocks no client): it failed before any lock, so no
    # script was frozen and none gets freezeFail
    assert s.scripts_saw() == []


def test_bad_argument_and_unreachable_daemon(setup: Any) -> None:
    s = setup()
    folder = s.install("vmware-tools/backupScripts.d")
    assert s.run(folder / BRIDGE.name, "bogus").returncode == 2
    s.agent.stop()
    proc = s.run(folder / BRIDGE.name, "freeze")
    assert proc.returncode != 0 and "cannot" in proc.stderr


# -- qemu-ga fsfreeze-hook ---------------------------------------------------------------------


def test_qemu_ga_hook_freeze_and_thaw(setup: Any) -> None:
    s = setup()
    folder = s.install("qemu/fsfreeze-hook.d")
    (folder / "old.dpkg-old").write_text("#!/bin/sh\nexit 1\n")
    (folder / "old.dpkg-old").chmod(0o755)
    log = s.root / "qga-fsfreeze-hook.log"
    assert fsfreeze_hook(s, folder, "freeze", log) == 0
    st = s.status()
    assert st["state"] == "frozen" and st["label"].startswith("qemu-ga-")
    insert = s.insert(3)
    freeze_path(s.fs.path)  # qemu-ga's FIFREEZE (of the test's filesystem only)
    time.sleep(0.3)
    thaw_path(s.fs.path)  # FITHAW
    assert insert.done_at is None
    assert fsfreeze_hook(s, folder, "thaw", log) == 0
    assert insert.join() < 10
    assert s.pg_holders() == 0 and s.status()["state"] == "idle"
    assert "consistency application" in log.read_text()
    record = json.loads((s.root / "qemu-ga-bridge.json").read_text())  # for quiesce-host
    assert record["verb"] == "thaw" and record["return"]["consistency"] == "application"


def test_qemu_ga_master_hook_runs_the_folder_and_fails_when_the_agent_is_down(
    setup: Any,
) -> None:
    s = setup()
    folder = s.install("qemu/fsfreeze-hook.d")
    (folder / "10-other").write_text(RECORDER.format(log=s.root / "other.log"))
    (folder / "10-other").chmod(0o755)
    s.env["QUIESCE_FSFREEZE_HOOK_DIR"] = str(folder)
    s.env["QUIESCE_FSFREEZE_HOOK_LOG"] = str(s.root / "hook.log")
    assert s.run(MASTER, "freeze").returncode == 0
    assert s.status()["state"] == "frozen"
    assert s.run(MASTER, "thaw").returncode == 0
    assert s.status()["state"] == "idle"
    s.agent.stop()
    failed = s.run(MASTER, "freeze")
    # Debian's hook exits 0 here, and qemu-ga reports the freeze a success
    assert failed.returncode != 0 and "freeze failed" in failed.stderr, failed.stderr
    # the stock folder's other script froze first, and got its thaw back
    assert (s.root / "other.log").read_text().split() == ["freeze", "thaw", "freeze", "thaw"]


# -- the ceiling and a dying daemon ------------------------------------------------------------


def test_ceiling_releases_database_locks_and_ends_backup_mode(setup: Any) -> None:
    s = setup(ceiling=2)
    folder = s.install("vmware-tools/backupScripts.d")
    t0 = time.monotonic()
    assert s.run(folder / BRIDGE.name, "freeze").returncode == 0
    insert = s.insert(4)
    assert s.pg_holders() == 1
    assert insert.join() < 6 and insert.error is None  # released by the ceiling, not a thaw
    assert time.monotonic() - t0 >= 1.5
    deadline = time.monotonic() + 5
    while s.pg_holders() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.pg_holders() == 0  # backup mode ended with the session
    assert "aborting backup due to backend exiting" in s.pg.log_text()
    proc = s.run(folder / BRIDGE.name, "thaw")
    assert proc.returncode == 6
    assert "NOT consistent" in proc.stderr and "not application-consistent" in proc.stderr


def test_sigkilled_daemon_takes_database_locks_with_it(setup: Any) -> None:
    s = setup()
    folder = s.install("vmware-tools/backupScripts.d")
    assert s.run(folder / BRIDGE.name, "freeze").returncode == 0
    insert = s.insert(5)
    time.sleep(0.3)
    assert insert.done_at is None
    s.agent.stop(signal.SIGKILL)
    assert insert.join() < 5 and insert.error is None
    deadline = time.monotonic() + 5
    while s.pg_holders() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.pg_holders() == 0
    assert s.run(folder / BRIDGE.name, "thaw").returncode != 0
