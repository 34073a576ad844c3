"""A booted guest for the tests and benchmarks of the agent on a real virtio-serial port.

``booted(image, log)`` boots the guest image once with a small raw data disk of its own
(``/dev/vdb``), makes it ext4 and mounts it at ``/mnt/data`` from here, gives the agent a
configuration that names only that mount (never the guest's root), and restarts it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from host.lab.image import GuestImage
from host.lab.vmboot import VM, boot
from host.snapshots.cycle import Faults

DATA = "/mnt/data"
SCRIPTS = "/etc/quiesce-agent/backupScripts.d"
AGENT_YAML = f"""\
listen:
  unix: /run/quiesce-agent/agent.sock
  virtio_serial: /dev/virtio-ports/org.quiesce.0
freeze:
  ceiling_seconds: 30
  timeout_seconds: 20
scripts:
  dir: {SCRIPTS}
  timeout_seconds: 10
filesystems:
  mounts: [{DATA}]
"""
BRIDGE_HOOK = "/etc/qemu/fsfreeze-hook.d/50-quiesce-agent-bridge"
MASTER_HOOK = "/etc/qemu/quiesce-agent-fsfreeze-hook"


class KillAgentWhenFrozen(Faults):
    """A cycle's fault: SIGKILL the guest's agent (``pid``) right after its freeze answered;
    ``killed_at`` is when (time.monotonic)."""

    def __init__(self, guest: Guest, pid: int) -> None:
        self.guest, self.pid = guest, pid
        self.killed_at: float | None = None

    def after_freeze(self) -> None:
        self.guest.sh(f"kill -9 {self.pid}")
        self.killed_at = time.monotonic()


class Guest:
    """The booted VM with the helpers the tests share."""

    def __init__(self, vm: VM, run_dir: Path) -> None:
        self.vm = vm
        self.run_dir = run_dir
        self.qga_endpoint = f"qemu-ga:unix:{vm.qga_socket}"

    def sh(self, script: str, timeout: float = 60.0) -> str:
        """Run a shell script in the guest; its output. AssertionError if it fails."""
        rc, out = self.vm.guest_run(["/bin/sh", "-c", script], timeout)
        assert rc == 0, f"guest: {script!r} exited {rc}: {out}"
        return out

    def agent_pid(self) -> int:
        return int(self.sh("systemctl show -p MainPID --value quiesce-agent").strip())

    def restart_agent(self) -> None:
        self.sh("systemctl restart quiesce-agent", timeout=120)
        self.vm.wait_agent(120)

    def qga_hook(self, hook: str | None) -> None:
        """qemu-ga's fsfreeze hook (None: none), qemu-ga restarted with it."""
        conf = f"[general]\\nfsfreeze-hook={hook}\\n" if hook else "[general]\\n"
        # restarted a second later: the qemu-ga running this command must still answer for it
        self.sh(
            f"printf '{conf}' > /etc/qemu/qemu-ga.conf && "
            "(sleep 1; systemctl --no-block restart qemu-guest-agent) >/dev/null 2>&1 &"
        )
        time.sleep(3.0)  # the old qemu-ga has gone by then
        self.vm.wait_qga(60)

    def writable(self) -> bool:
        """Can the guest write to the data disk (a frozen one blocks the write)?"""
        rc, _ = self.vm.guest_run(
            ["/bin/sh", "-c", f"echo $$ > {DATA}/probe && sync {DATA}/probe"], timeout=20
        )
        return rc == 0


@contextmanager
def booted(image: GuestImage, log: Callable[[str], None] = print) -> Iterator[Guest]:
    """The guest, ready (agent restarted on the test configuration); QEMU ends after."""
    run_dir = Path(tempfile.mkdtemp(prefix="qvm-"))  # short: socket paths < 108 bytes
    data = run_dir / "data.raw"
    with open(data, "wb") as f:
        f.truncate(64 << 20)
    extra = ["-drive", f"file={data},format=raw,if=virtio"]
    started = time.monotonic()
    vm = boot(image, run_dir, log=log, extra=extra)
    try:
        vm.wait_agent()
        vm.wait_qga()
        g = Guest(vm, run_dir)
        g.sh(
            f"mkfs.ext4 -q -F /dev/vdb && mkdir -p {DATA} && mount /dev/vdb {DATA} && "
            f"mkdir -p {SCRIPTS} && cat > /etc/quiesce-agent/agent.yaml <<'EOF'\n"
            f"{AGENT_YAML}EOF\n"
        )
        g.restart_agent()
        log(f"guest ready in {time.monotonic() - started:.1f} s ({vm.accel})")
        yield g
    finally:
        vm.close()
        shutil.rmtree(run_dir, ignore_errors=True)
