"""A throw-away lab on one machine: an engine disk served through FUSE, ext4 loop-mounted on
it, private PostgreSQL and MariaDB with their data there, and an agent configured for exactly
that. The demo and the benchmark drive it, with the insert load of host.lab.load.

Layout under one temp dir (``ROOT``)::

    disk/        the engine disk (base + deltas + tree.json), held by 'quiesce-host serve'
    fuse/        FUSE mount point: fuse/disk.raw is the disk's current state
    mnt/         ext4 on a loop device over fuse/disk.raw: mnt/pg, mnt/mysql
    run/         sockets, pid files and logs (never on the frozen filesystem)
    artifacts/   the agent writes backup_label copies here

Safety: the agent's config lists ``mnt/`` as its only filesystem (never ``auto``), and it runs
with QUIESCE_FREEZE_ONLY_UNDER=ROOT/mnt, so its FIFREEZE cannot reach anything else. Every
child runs in its own session: a Ctrl-C reaches only the demo, which takes the lab down in
the one safe order (``close``): load, agent (its SIGTERM thaws), a belt-and-braces FITHAW of
mnt/, databases, unmount, FUSE server, files.

Raises LabError (a step failed; the message has the tool's output and what to check).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agent import protocol
from common.errors import QuiesceError
from host.engine.disk import Disk
from host.lab.databases import LabError, LabMaria, LabPostgres, mariadbd_path, pg_bindir, run

Say = Callable[[str], None]


def missing_requirements() -> list[str]:
    """What the lab needs and this machine lacks, each with what to do."""
    out = []
    if os.geteuid() != 0:
        out.append("root (loop devices, FUSE mounts and FIFREEZE need it): sudo scripts/demo")
    for tool in ("mkfs.ext4", "mount", "umount", "fusermount3", "fsfreeze"):
        if shutil.which(tool) is None:
            out.append(f"{tool} (scripts/setup installs e2fsprogs, fuse3, util-linux)")
    if not os.path.exists("/dev/fuse"):
        out.append("/dev/fuse (load the fuse module: modprobe fuse)")
    if pg_bindir() is None:
        out.append("PostgreSQL (scripts/setup installs postgresql)")
    if mariadbd_path() is None:
        out.append("MariaDB (scripts/setup installs mariadb-server)")
    return out


def console_script(name: str) -> str:
    """The installed command ``name`` (quiesce-host, quiesce-agent) next to the running Python:
    the lab runs what a user runs. Raises LabError if it is not there."""
    path = Path(sys.executable).parent / name
    if not os.access(path, os.X_OK):
        raise LabError(
            f"{path} is missing: the lab runs the installed {name} command next to "
            f"{sys.executable}; run scripts/setup (it installs the package into .venv)"
        )
    return str(path)


def _mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def _mounts_under(root: Path) -> list[str]:
    prefix = os.path.realpath(root) + os.sep
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A lab child in its own session (a Ctrl-C reaches only the demo), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **(env or {})),
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 60.0) -> None:
    """SIGTERM, ``grace`` seconds to exit cleanly, then SIGKILL; always reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Lab:
    """The lab's parts and their life-cycle. ``close()`` is safe at any point, twice too."""

    def __init__(self, parent: str | None = None, size: int = 1 << 30, say: Say = print) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="qdemo-", dir=parent))
        os.chmod(self.root, 0o711)  # the database users must reach run/ and mnt/
        self.disk, self.fuse, self.mnt = self.root / "disk", self.root / "fuse", self.root / "mnt"
        self.run, self.artifacts = self.root / "run", self.root / "artifacts"
        for d in (self.fuse, self.mnt, self.run, self.artifacts):
            d.mkdir()
        os.chmod(self.run, 0o711)
        self.size = size
        self.say = say
        self.serve_proc: subprocess.Popen[bytes] | None = None
        self.agent_proc: subprocess.Popen[bytes] | None = None
        self.pg = LabPostgres(self.mnt / "pg", self.run / "pg")
        self.maria = LabMaria(self.mnt / "mysql", self.run / "mysql")
        self.agent_socket = str(self.run / "agent.sock")

    # -- building ---------------------------------------------------------------------------
    def build(self) -> None:
        """Disk, FUSE, ext4, both databases initialised and running, the agent listening."""
        Disk.create(self.disk, self.size).close()
        self.serve()
        run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
                str(self.fuse / "disk.raw"),
            ],
            timeout=120,
        )
        self.mount()
        self.pg.init().start()
        self.maria.init().start()
        self.start_agent()

    def serve(self) -> None:
        """``quiesce-host serve DISK --fuse fuse/`` in its own session; wait for disk.raw."""
        cmd = [console_script("quiesce-host"), "serve", str(self.disk), "--fuse", str(self.fuse)]
        self.serve_proc = spawn(cmd, self.run / "serve.log")
        end = time.monotonic() + 20
        while not (_mounted(self.fuse) and (self.fuse / "disk.raw").exists()):
            if self.serve_proc.poll() is not None or time.monotonic() > end:
                raise LabError(f"quiesce-host serve did not come up:\n{self._log('serve.log')}")
            time.sleep(0.05)

    def stop_serve(self) -> None:
        proc, self.serve_proc = self.serve_proc, None
        stop(proc)
        if _mounted(self.fuse):
            run(["fusermount3", "-u", "-z", str(self.fuse)], timeout=30, check=False)

    def mount(self) -> None:
        run(["mount", "-o", "loop", str(self.fuse / "disk.raw"), str(self.mnt)], timeout=60)

    def umount(self) -> None:
        if _mounted(self.mnt):
            run(["umount", str(self.mnt)], timeout=120)

    def start_agent(self) -> None:
        config = {
            "listen": {"unix": self.agent_socket},
            "state_dir": str(self.run / "agent-state"),
            "freeze": {"ceiling_seconds": 30, "timeout_seconds": 20},
            "filesystems": {"mounts": [str(self.mnt)]},  # the lab's own mount, never auto
            "postgres": [
                {"name": "demo", "dsn": self.pg.dsn, "artifacts_dir": str(self.artifacts)}
            ],
            "mysql": [{"name": "demo", "unix_socket": self.maria.socket, "user": "root"}],
        }
        cfg = self.run / "agent.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd = [console_script("quiesce-agent"), "--config", str(cfg), "serve"]
        # the agent's FIFREEZE is confined to the lab's own mount, whatever its config says
        confined = {"QUIESCE_FREEZE_ONLY_UNDER": str(self.mnt)}
        self.agent_proc = spawn(cmd, self.run / "agent.log", confined)
        end = time.monotonic() + 20
        while True:
            try:
                with protocol.Client(f"unix:{self.agent_socket}", connect_timeout=1) as c:
                    c.ping()
                return
            except QuiesceError as err:
                if self.agent_proc.poll() is not None or time.monotonic() > end:
                    raise LabError(
                        f"the agent did not come up ({err}):\n{self._log('agent.log')}"
                    ) from err
                time.sleep(0.05)

    def stop_agent(self) -> None:
        proc, self.agent_proc = self.agent_proc, None
        stop(proc)  # SIGTERM: the agent thaws whatever it holds, then exits

    def _log(self, name: str) -> str:
        try:
            return (self.run / name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    # -- the revert ------------------------------------------------------------------------
    def take_down(self) -> None:
        """Databases stopped, filesystem unmounted, FUSE server stopped: the disk is free."""
        self.pg.stop()
        self.maria.stop()
        self.umount()
        self.stop_serve()

    def bring_up(self) -> None:
        """Serve the disk again, mount it, start both databases from what is on it."""
        self.serve()
        self.mount()
        self.pg.drop_stale_pid()  # the snapshot was taken while PostgreSQL ran
        self.pg.start()
        self.maria.start()

    # -- cleanup ---------------------------------------------------------------------------
    def close(self) -> None:
        """Take everything down in the safe order; say what could not be removed."""
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("stop the agent", self.stop_agent),
            ("thaw the lab filesystem", self._thaw_mnt),
            ("stop PostgreSQL", lambda: self.pg.stop("immediate")),
            ("stop MariaDB", self.maria.stop),
            ("unmount the lab filesystem", self._umount_hard),
            ("stop the FUSE server", self.stop_serve),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as err:  # noqa: BLE001 - keep taking the rest down
                self.say(f"cleanup: could not {what}: {err}")
        left = _mounts_under(self.root)
        if left:
            self.say(
                f"cleanup: still mounted, left in place: {', '.join(left)}; "
                f"umount them, then rm -rf {self.root}"
            )
            return
        shutil.rmtree(self.root, ignore_errors=True)

    def _thaw_mnt(self) -> None:
        if _mounted(self.mnt):  # EINVAL when not frozen: fine
            run(["fsfreeze", "-u", str(self.mnt)], timeout=10, check=False)

    def _umount_hard(self) -> None:
        if not _mounted(self.mnt):
            return
        if run(["umount", str(self.mnt)], timeout=120, check=False).returncode != 0:
            run(["umount", "-l", str(self.mnt)], timeout=60, check=False)
