"""The VM lab: the guest image (host/lab/image.py) booted under QEMU on one engine VM
(host/engine/vm.py) whose disks are the guest's, all served by one ``quiesce-host serve VM
--nbd`` (one NBD export per disk, by name; QEMU the NBD client), the agent on the
virtio-serial port ``org.quiesce.0``, the guest's PostgreSQL and MariaDB reached from the
host through ports QEMU forwards on 127.0.0.1.

Layout under one temp dir (``root``)::

    vm/           the engine VM: its tree (one snapshot = a layer of every disk) and
      root/       its root disk; the base starts as a copy of the image's root.img
      data/       its data disk, from the image's data.img: both databases' data (and
                  MariaDB's binary log), mounted at DATA_MOUNT in the guest; all the agent
                  freezes
    run/          serve.log; boot-N/ for the N-th boot: console.log, qemu.log and the
                  chardev sockets (qa.sock: the agent, qga.sock: qemu-ga)

A boot (``start``): the VM served on 127.0.0.1 (a port of its choosing), QEMU (KVM where a
bounded boot shows it works, else TCG: host/lab/vmboot.py), then within ``boot_timeout``
seconds of QEMU's start: qemu-ga answers, the data disk is mounted and both databases are
started (through qemu-ga's guest-exec; the image leaves their units disabled), the agent
answers its ping, both databases answer through their forwarded ports. Each of these moments
is kept (``BootTimes``). A snapshot through the server's control socket cuts both disks at
one instant. A VM revert (``power_off``, ``revert``, ``start``): the guest shut down, the
server stopped, the VM (every disk as one) reverted by the engine, served and booted again.

``close()`` takes everything down, in this order, at any point (a Ctrl-C included): QEMU,
the server (which flushes every disk), the folder. Nothing is mounted on the host.

Raises LabError naming the step (``boot 2: ...``) with the tail of the guest's console.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import protocol
from common.errors import QuiesceError
from host.engine.vm import VM as EngineVM
from host.lab import vmboot
from host.lab.databases import LabError
from host.lab.forwarded import ForwardedMaria, ForwardedPostgres, check_free, free_port
from host.lab.guest_recipe import DATA_MOUNT, MYSQL_PORT, PG_PORT
from host.lab.image import GuestImage
from host.lab.local import console_script, spawn, stop
from host.lab.procs import tail
from host.lab.vmboot import USERSPACE, VM

DISKS = ("root", "data")  # in QEMU's order: /dev/vda, /dev/vdb
BOOT_TIMEOUT = 300.0  # QEMU's start to every part answering (TCG on 2 busy cores)
SERVE_TIMEOUT = 30.0
SYNC_PING, SYNC_TIMEOUT = 1.5, 10.0  # SyncedClient's pings: each, and all of them
MAX_SOCKET_PATH = 100  # a Unix socket path is at most 107 bytes
START_DATABASES = (  # in the guest, as root: the data disk first, then the servers on it
    f"systemctl start {DATA_MOUNT[1:].replace('/', '-')}.mount || exit 3; "
    f"mountpoint -q {DATA_MOUNT} || exit 4; "
    "systemctl start --no-block postgresql.service mariadb.service"
)
DB_STATUS = (  # why a database did not come up, for the error
    "systemctl --no-pager --lines=15 status 'postgresql@*' mariadb.service 2>&1 | tail -n 40"
)
URI = re.compile(r"over NBD at (nbd://\S+/([^/\s]+))")  # a VM's: one per disk, by name
Say = Callable[[str], None]


@dataclass
class BootTimes:
    """One boot's moments, in seconds since QEMU started."""

    number: int
    accel: str = "?"
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def ready(self) -> float:
        return max(self.marks.values(), default=0.0)

    def line(self) -> str:
        parts = ", ".join(f"{what} {t:.1f} s" for what, t in self.marks.items())
        return f"boot {self.number} ({self.accel}): {parts}; ready at {self.ready:.1f} s"


class SyncedClient(protocol.Client):
    """A client of the agent's chardev that syncs each new connection before its first real
    request: ``ping`` with a short timeout, on the same connection, until one is answered
    (qemu-ga's clients do the same with guest-sync). Today's agent loses the reply to a
    host's first request on virtio-serial when the guest kernel hands it the data before the
    host-connected event (defect 1 of docs/vm-lab.md, issue 11); the second ping is answered.
    Raises NoReply after SYNC_TIMEOUT seconds."""

    def connect(self) -> SyncedClient:
        super().connect()
        until = time.monotonic() + SYNC_TIMEOUT
        while True:
            try:
                self.call("ping", timeout=SYNC_PING)
                return self
            except protocol.NoReply:
                if time.monotonic() + SYNC_PING > until:
                    raise


class Served:
    """One ``quiesce-host serve VM --nbd 127.0.0.1:0`` in its own session: every disk of
    the VM an export by its name (``uris``)."""

    def __init__(self, folder: Path, names: tuple[str, ...], log: Path) -> None:
        self.folder, self.log = folder, log
        cmd = [console_script("quiesce-host"), "serve", str(folder), "--nbd", "127.0.0.1:0"]
        start = log.stat().st_size if log.is_file() else 0  # the log of every boot's server
        self.proc: subprocess.Popen[bytes] | None = spawn(cmd, log)
        self.uris = self._wait_uris(start, names)

    def _wait_uris(self, start: int, names: tuple[str, ...]) -> dict[str, str]:
        until = time.monotonic() + SERVE_TIMEOUT
        uris: dict[str, str] = {}
        while time.monotonic() < until:
            with open(self.log, "rb") as f:
                f.seek(start)
                uris = {n: u for u, n in URI.findall(f.read().decode("utf-8", "replace"))}
            if all(name in uris for name in names):
                return uris
            if self.proc is None or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        missing = ", ".join(n for n in names if n not in uris)
        raise LabError(
            f"serving the VM: quiesce-host serve {self.folder} --nbd did not serve {missing} "
            f"within {SERVE_TIMEOUT:g} s; its log ({self.log}):\n{tail(self.log, 20)}"
        )

    def stop(self) -> None:
        """SIGTERM (the server flushes and closes the disk), SIGKILL after a grace."""
        proc, self.proc = self.proc, None
        stop(proc, grace=60.0)


class VMLab:
    """The lab's parts and their life-cycle. ``close()`` is safe at any point, twice too."""

    def __init__(
        self,
        image: GuestImage,
        *,
        parent: str | None = None,
        say: Say = print,
        boot_timeout: float = BOOT_TIMEOUT,
        pg_port: int | None = None,
        mysql_port: int | None = None,
        kernel_args: str = "",
    ) -> None:
        self.image = image
        self.root = Path(tempfile.mkdtemp(prefix="qvmlab-", dir=parent))
        self.vm_folder = self.root / "vm"
        self.disks = {name: self.vm_folder / name for name in DISKS}
        self.run = self.root / "run"
        self.run.mkdir()
        self.say = say
        self.boot_timeout = boot_timeout
        self.kernel_args = kernel_args
        self.pg = ForwardedPostgres(pg_port or free_port())
        self.maria = ForwardedMaria(mysql_port or free_port())
        self.server: Served | None = None
        self.vm: VM | None = None
        self.boots: list[BootTimes] = []
        if len(str(self.run / "boot-99" / "qga.sock")) > MAX_SOCKET_PATH:
            self.close()
            raise LabError(f"{self.root}: too long for the sockets in it; choose a shorter --dir")

    # -- the disks ------------------------------------------------------------------------
    def build(self) -> None:
        """The engine VM: its root disk from the image's root.img, data from its data.img."""
        sources = {"root": self.image.root, "data": self.image.data}
        sizes = [(name, sources[name].stat().st_size) for name in DISKS]
        t0 = time.monotonic()
        EngineVM.create(self.vm_folder, sizes, preallocate=False, sources=sources).close()
        for name, size in sizes:
            self.say(
                f"{name} disk {self.disks[name]}: {size >> 20} MiB, its base a copy of "
                f"{sources[name].name}"
            )
        self.say(f"VM {self.vm_folder}: {len(sizes)} disks ({time.monotonic() - t0:.1f} s)")

    def serve(self) -> None:
        """The VM served by one process, every disk an export by name on 127.0.0.1."""
        if self.server is None:
            self.server = Served(self.vm_folder, DISKS, self.run / "serve.log")

    def stop_serving(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    # -- a boot ---------------------------------------------------------------------------
    def start(self) -> BootTimes:
        """Serve the disks and boot the guest until every part answers (see the module)."""
        times = BootTimes(len(self.boots) + 1)
        step = f"boot {times.number}"
        try:
            check_free(self.pg.port, "the forward to the guest's PostgreSQL")
            check_free(self.maria.port, "the forward to the guest's MariaDB")
            self.serve()
            run_dir = self.run / f"boot-{times.number}"
            run_dir.mkdir()
            self.vm = vmboot.boot(
                self.image,
                run_dir,
                log=self.say,
                extra=self._network(),
                disks=self._drives(),
                kernel_args=self.kernel_args,
            )
            times.accel = self.vm.accel
            self._wait_ready(self.vm, times)
        except LabError as err:
            raise LabError(f"{step}: {err}") from err
        self.boots.append(times)
        return times

    def _network(self) -> list[str]:
        """User networking, the guest cut off from the outside (restrict=on); only the two
        servers' ports forwarded, to 127.0.0.1."""
        fwd = [f"hostfwd=tcp:127.0.0.1:{self.pg.port}-:{PG_PORT}"]
        fwd += [f"hostfwd=tcp:127.0.0.1:{self.maria.port}-:{MYSQL_PORT}"]
        netdev = ",".join(["user", "id=net0", "restrict=on", *fwd])
        return ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"]

    def _drives(self) -> list[str]:
        """Each disk its export of the server; writeback: the guest's flushes become NBD
        FLUSHes."""
        assert self.server is not None
        out: list[str] = []
        for name in DISKS:
            uri = self.server.uris[name]
            out += ["-drive", f"file={uri},format=raw,if=none,id={name},cache=writeback"]
            out += ["-device", f"virtio-blk-pci,drive={name},serial={name}"]
        return out

    def _wait_ready(self, vm: VM, times: BootTimes) -> None:
        """Every part up within boot_timeout of QEMU's start, each moment in ``times``."""
        stage = ["the initramfs"]

        def left() -> float:
            return max(0.5, self.boot_timeout - vm.elapsed())

        def mark(what: str, then: str) -> None:
            times.marks[what] = round(vm.elapsed(), 1)
            stage[0] = then

        try:
            if vm.wait_console(USERSPACE, left()):
                mark("userspace", "qemu-ga")
            vm.wait_qga(left())
            mark("qemu-ga", "the data disk")
            rc, out = vm.guest_run(["/bin/sh", "-c", START_DATABASES], timeout=left())
            if rc != 0:
                what = "mounted" if rc == 4 else "mountable"
                raise LabError(
                    f"the data disk (/dev/vdb, {self.disks['data']}) is not {what} at "
                    f"{DATA_MOUNT} in the guest ({out.strip()}); the console "
                    f"({vm.console}):\n{tail(vm.console)}"
                )
            mark("data disk", "the agent")
            vm.wait_agent(left())
            mark("agent", "PostgreSQL")
            self._wait_db(vm, self.pg, left)
            mark(self.pg.name, "MariaDB")
            self._wait_db(vm, self.maria, left)
            mark(self.maria.name, "")
        except LabError as err:
            if vm.proc.poll() is None and vm.elapsed() >= self.boot_timeout:
                raise LabError(
                    f"the guest was not up within {self.boot_timeout:g} s of QEMU's start "
                    f"({vm.accel}), still waiting for {stage[0]}: {err}"
                ) from err
            raise

    def _wait_db(
        self, vm: VM, db: ForwardedPostgres | ForwardedMaria, left: Callable[[], float]
    ) -> None:
        until = time.monotonic() + left()
        while True:
            why = db.ready()
            if why is None:
                return
            if vm.proc.poll() is not None:
                raise LabError(f"{vmboot.exit_reason(vm)}; the console:\n{tail(vm.console)}")
            if time.monotonic() > until:
                break
            time.sleep(0.5)
        status = self._guest_output(vm, DB_STATUS)
        raise LabError(
            f"{db.name} in the guest did not answer at 127.0.0.1:{db.port} within "
            f"{self.boot_timeout:g} s of boot (last: {why}); in the guest:\n{status}\n"
            f"the console ({vm.console}):\n{tail(vm.console, 20)}"
        )

    def _guest_output(self, vm: VM, command: str) -> str:
        """A diagnostic command's output, or why there is none (never raises)."""
        try:
            return vm.guest_run(["/bin/sh", "-c", command], timeout=30.0)[1]
        except QuiesceError as err:
            return f"(could not ask the guest: {err})"

    def guest_log(self, command: str) -> str:
        """A shell command's output in the running guest (diagnostics; never raises)."""
        return "" if self.vm is None else self._guest_output(self.vm, command)

    # -- snapshots and the revert -----------------------------------------------------------
    def power_off(self, timeout: float = 120.0) -> str:
        """Shut the guest down (qemu-ga), then stop the server; what happened to QEMU."""
        how = "not running"
        if self.vm is not None:
            how = self.vm.poweroff(timeout)
            self.vm = None
        self.stop_serving()
        return how

    def revert(self, name: str) -> None:
        """The VM, every disk as one, back to snapshot ``name`` by the engine (nothing may
        hold it: power_off first)."""
        with EngineVM.open(self.vm_folder) as vm:
            vm.snapshot_revert(name)

    @property
    def console(self) -> Path | None:
        """The console log of the latest boot."""
        boots = sorted(self.run.glob("boot-*"), key=lambda p: int(p.name.split("-")[1]))
        return boots[-1] / "console.log" if boots else None

    # -- cleanup ---------------------------------------------------------------------------
    def __enter__(self) -> VMLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """QEMU killed, the server stopped, the folder removed; says what it could not do."""
        vm, self.vm = self.vm, None
        steps: list[tuple[str, Callable[[], object]]] = [
            ("stop QEMU", vm.close if vm is not None else lambda: None),
            ("stop the VM's server", self.stop_serving),
        ]
        for what, action in steps:
            try:
                action()
            except Exception as err:  # noqa: BLE001 - keep taking the rest down
                self.say(f"cleanup: could not {what}: {err}")
        if os.path.isdir(self.root):
            shutil.rmtree(self.root, ignore_errors=True)
