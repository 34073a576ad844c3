"""A throw-away single-node Ceph (one mon, one mgr, one memstore OSD) for the RBD tests.

Bootstrapped by hand the way Ceph's ``vstart.sh`` does, everything in one temp dir: a private
``ceph.conf``, keyring, run dir (admin sockets, pid files) and logs, the monitor on a free
port of 127.0.0.1 (msgr v2 only), the daemons in the foreground in their own sessions. The
machine's ``/etc/ceph`` is never read or written: every daemon and client gets ``-c`` / the
conf file, and the conf names its keyring. ``start()`` returns when the cluster is really
ready: HEALTH_OK **and** every PG of every pool active+clean (HEALTH_OK alone comes while PGs
are still peering).

Settings that make one node fast and healthy (facts measured on this machine's kind, see
/work/shared/notes/host-targets.md, "Addendum"):

- ``osd objectstore = memstore``: ready in about 3 s (bluestore on a sparse file: 7.5 s); the
  OSD keeps every object in memory (about 2.6x what is written);
- ``paxos propose interval = 0.01``, ``paxos min wait = 0.005``: a snapshot id comes from the
  monitor, and at the defaults every snapshot took about 1 s;
- the mgr gets a module dir with only its always-on modules (loading them all takes about
  5 s; leaving one of those out turns health to ``MGR_MODULE_ERROR``);
- pool size 1, no redundancy warning, a low ``mon data avail warn`` (the test machine's disk
  may be fuller than the default 30 %).

Every key is made here (``cephx`` keys are 16 random bytes with a small header), and the
monitor's ``--mkfs`` imports them all, so no ``ceph auth`` round trip is needed. Raises
``CephStartError`` with the tail of the failing daemon's log.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from host.lab.procs import kill_group, tail

try:  # optional: without librados the fixture skips (or fails under CI's need())
    import rados
except ImportError:  # pragma: no cover - a machine without python3-rados
    rados = None

BINARIES = ("ceph-mon", "ceph-mgr", "ceph-osd", "monmaptool")
ALWAYS_ON_MODULES = (
    "balancer",
    "crash",
    "devicehealth",
    "orchestrator",
    "pg_autoscaler",
    "progress",
    "rbd_support",
    "status",
    "telemetry",
    "volumes",
)
MGR_MODULES = Path("/usr/share/ceph/mgr")
POOL = "rbd"
POOL_PGS = 8


class CephStartError(RuntimeError):
    """The throw-away cluster did not come up; the message has the daemon's log tail."""


def missing() -> str | None:
    """Why this machine cannot run the throw-away cluster, or None when it can."""
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return (
            f"{', '.join(absent)} not installed (scripts/setup installs ceph-mon ceph-mgr ceph-osd)"
        )
    if rados is None:
        return "python3-rados is not importable here (scripts/setup links it into .venv)"
    return None


def cephx_key() -> str:
    """A new cephx secret as ``ceph-authtool --gen-print-key`` prints it: type AES (1),
    created (sec, nsec), length 16, the secret; base64."""
    now = time.time()
    header = struct.pack("<HIIH", 1, int(now), int((now % 1) * 1e9), 16)
    return base64.b64encode(header + os.urandom(16)).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ENTITIES = {
    "mon.": {"mon": "allow *"},
    "client.admin": {"mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *"},
    "mgr.x": {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"},
    "osd.0": {"mon": "allow profile osd", "osd": "allow *", "mgr": "allow profile osd"},
}


class Cluster:
    """One throw-away cluster in ``self.dir``; ``start()``, then ``stop()`` (removes it)."""

    def __init__(self, base: Path | None = None, memstore_bytes: int = 8 << 30) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qa-ceph-", dir=base))
        self.conf = self.dir / "ceph.conf"
        self.keyring = self.dir / "keyring"
        self.fsid = str(uuid.uuid4())
        self.port = _free_port()
        self.pool = POOL
        self.memstore_bytes = memstore_bytes
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}

    # -- files ----------------------------------------------------------------------------
    def _write_files(self) -> None:
        for sub in ("run", "log", "mon.a", "mgr.x", "osd.0", "mgr-modules"):
            (self.dir / sub).mkdir()
        lines = []
        for name, caps in ENTITIES.items():
            lines += [f"[{name}]", f"\tkey = {cephx_key()}"]
            lines += [f'\tcaps {svc} = "{cap}"' for svc, cap in caps.items()]
        self.keyring.write_text("\n".join(lines) + "\n")
        self.keyring.chmod(0o600)
        for name in (*ALWAYS_ON_MODULES, "mgr_module.py", "mgr_util.py"):
            (self.dir / "mgr-modules" / name).symlink_to(MGR_MODULES / name)
        self.conf.write_text(self._conf_text())

    def _conf_text(self) -> str:
        d = self.dir
        return f"""[global]
fsid = {self.fsid}
mon host = v2:127.0.0.1:{self.port}
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
keyring = {self.keyring}
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
mon cluster log file = {d}/log/cluster.log
crash dir = {d}/crash
log to stderr = false
err to stderr = true
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mon max pg per osd = 1000
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
rados osd op timeout = 60
rados mon op timeout = 60
client mount timeout = 30

[client]
admin socket =
log file =

[mon]
mon data = {d}/mon.a
paxos propose interval = 0.01
paxos min wait = 0.005
mon initial members = a
mgr initial modules =

[mgr]
mgr data = {d}/mgr.x
mgr module path = {d}/mgr-modules
mgr stats period = 1
mgr tick period = 1
mon mgr digest period = 1

[osd]
osd data = {d}/osd.0
osd crush update on start = true
"""

    # -- processes ------------------------------------------------------------------------
    def _run(self, cmd: list[str], timeout: float = 30.0) -> None:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            start_new_session=True,
        )
        if done.returncode != 0:
            raise CephStartError(
                f"{' '.join(cmd)} exited {done.returncode}: "
                f"{done.stderr.decode(errors='replace')[-2000:]}"
            )

    def _daemon(self, name: str, cmd: list[str]) -> None:
        with open(self.dir / "log" / f"{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [*cmd, "-f", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise CephStartError(
                    f"ceph {name} exited with {proc.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(
            tail(self.dir / "log" / f"{f}", lines)
            for f in (f"{name}.out", f"{name}.log")
            if (self.dir / "log" / f).exists()
        )

    # -- start ----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Cluster:
        """Bootstrap, start and wait until HEALTH_OK with every PG active+clean."""
        t0 = time.monotonic()
        try:
            self._bootstrap(t0, timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["ready_s"] = round(time.monotonic() - t0, 2)
        return self

    def _bootstrap(self, t0: float, timeout: float) -> None:
        self._write_files()
        monmap = str(self.dir / "monmap")
        self._run(["monmaptool", "--create", "--clobber", "--fsid", self.fsid,
                   "--addv", "a", f"[v2:127.0.0.1:{self.port}]", monmap])  # fmt: skip
        self._run(["ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap,
                   "--keyring", str(self.keyring), "-c", str(self.conf)])  # fmt: skip
        self._daemon("mon.a", ["ceph-mon", "-i", "a"])
        admin = self.client(connect_timeout=max(5.0, timeout))
        try:
            self.timings["mon_s"] = round(time.monotonic() - t0, 2)
            # its pool would be a PG more to wait for, created seconds later by the mgr
            self.command(admin, {"prefix": "config set", "who": "mgr",
                                 "name": "mgr/devicehealth/enable_monitoring", "value": "false",
                                 "force": True})  # fmt: skip
            self._daemon("mgr.x", ["ceph-mgr", "-i", "x"])
            osd_uuid = str(uuid.uuid4())
            self.command(admin, {"prefix": "osd new", "uuid": osd_uuid})
            self._run(["ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid,
                       "-c", str(self.conf)])  # fmt: skip
            self._daemon("osd.0", ["ceph-osd", "-i", "0"])
            self.command(admin, {"prefix": "osd pool create", "pool": self.pool,
                                 "pg_num": POOL_PGS, "pgp_num": POOL_PGS})  # fmt: skip
            self.command(admin, {"prefix": "osd pool application enable",
                                 "pool": self.pool, "app": "rbd"})  # fmt: skip
            self._wait_ready(admin, t0 + timeout)
        finally:
            admin.shutdown()

    def client(self, connect_timeout: float = 30.0) -> Any:
        """A connected ``rados.Rados`` as client.admin of this cluster (caller shuts it down)."""
        assert rados is not None, missing()
        cluster = rados.Rados(conffile=str(self.conf), name="client.admin")
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                cluster.connect(timeout=5)
                return cluster
            except rados.Error:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def command(self, admin: Any, cmd: dict[str, Any], timeout: float = 30.0) -> Any:
        """A monitor command's JSON reply; raises CephStartError on an error return."""
        ret, out, err = admin.mon_command(json.dumps({**cmd, "format": "json"}), b"", timeout)
        if ret != 0:
            raise CephStartError(f"ceph {cmd['prefix']}: {err} (ret {ret})")
        return json.loads(out) if out.strip() else None

    def status(self, admin: Any) -> dict[str, Any]:
        return dict(self.command(admin, {"prefix": "status"}))

    def not_ready(self, admin: Any) -> str | None:
        """What keeps the cluster from being ready, or None: health and every PG."""
        st = self.status(admin)
        health = st["health"]
        if health["status"] != "HEALTH_OK":
            return f"{health['status']}: {', '.join(sorted(health.get('checks', {})))}"
        pools = self.command(admin, {"prefix": "osd pool ls", "detail": "detail"})
        want = sum(int(p["pg_num"]) for p in pools)
        pgmap = st["pgmap"]
        clean = sum(
            s["count"] for s in pgmap.get("pgs_by_state", []) if s["state_name"] == "active+clean"
        )
        if pgmap.get("num_pgs") != want or clean != want:
            states = {s["state_name"]: s["count"] for s in pgmap.get("pgs_by_state", [])}
            return f"{clean} of {want} PGs active+clean ({states})"
        return None

    def _wait_ready(self, admin: Any, deadline: float) -> None:
        why: str | None = "not asked yet"
        while time.monotonic() < deadline:
            self._check_alive()
            why = self.not_ready(admin)
            if why is None:
                return
            time.sleep(0.05)
        raise CephStartError(f"the cluster was not ready in time: {why}\n{self.log_tail('mgr.x')}")

    # -- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL after a grace) and remove the dir."""
        for name in ("osd.0", "mgr.x", "mon.a"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                kill_group(proc, grace=5.0)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


HOLD_SCRIPT = """
import sys, rados, rbd
conf, pool, image, how = sys.argv[1:5]
cluster = rados.Rados(conffile=conf, name="client.admin")
cluster.connect(timeout=15)
ioctx = cluster.open_ioctx(pool)
img = rbd.Image(ioctx, image)
if how == "exclusive":
    img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
elif how == "write":
    img.write(b"x" * 512, 0)  # takes the (cooperative) exclusive lock, as a VM's first write
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
img.close()
ioctx.close()
cluster.shutdown()
"""


class OtherClient:
    """Another librados client (its own process) holding ``image`` open: ``how`` = ``open``
    (a watcher, as a running VM), ``write`` (and its exclusive lock, handed over on request)
    or ``exclusive`` (``lock_acquire(EXCLUSIVE)``: a lock it never hands over)."""

    def __init__(self, cluster: Cluster, image: str, how: str = "open") -> None:
        assert how in ("open", "write", "exclusive")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_SCRIPT, str(cluster.conf), cluster.pool, image, how],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"held":
            err = self.proc.stderr.read() if self.proc.stderr else b""
            self.release()
            raise RuntimeError(f"the other client could not hold {image}: {err.decode()[-800:]}")

    def release(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)

    def __enter__(self) -> OtherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


if __name__ == "__main__":  # time a start and a stop: python -m tests.helpers.ceph
    c = Cluster().start()
    print(c.timings, c.dir)
    c.stop()
