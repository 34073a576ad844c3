"""Boot the guest image under QEMU, wait for the agent and qemu-ga, power it off: the VM lab's base.

``boot(image, run_dir, log=...)`` starts QEMU on a ``GuestImage`` (host/lab/image.py) with
``-kernel``/``-initrd`` and the root disk opened ``snapshot=on``, so the cached image is never
written; ``disks=`` gives QEMU other disks instead (the VM lab's: NBD exports of engine disks,
host/lab/vmlab.py), and ``kernel_args=`` adds to the kernel's command line. The console
(ttyS0) goes to ``run_dir/console.log``, QEMU's own messages to ``run_dir/qemu.log``; two
virtio-serial ports are QEMU socket chardevs in ``run_dir``: ``org.quiesce.0`` (the agent,
``VM.agent_endpoint``) and ``org.qemu.guest_agent.0`` (qemu-ga).

KVM is used only where a guest boots with it: ``/dev/kvm`` opening is not enough (on a nested
host here the guest hangs after "Probing EDD"), so a KVM boot must reach the initramfs within
``KVM_PROBE`` seconds or it is killed and the guest booted again under TCG.
``$QUIESCE_VM_ACCEL`` (kvm or tcg) skips the probe.

Every wait is bounded; QEMU runs in its own session (a Ctrl-C reaches us, not it) and is
killed and reaped when the ``VM`` is closed, whatever happened. Both guest agents are spoken
to with the protocol's one client (qemu-ga's requests have the same shape); ``guest_run``
runs a command in the guest through qemu-ga's guest-exec.

Raises LabError with the tail of the console when QEMU or the guest fails (saying so when
the console shows a kernel panic).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import protocol
from host.lab.databases import LabError
from host.lab.guest_recipe import AGENT_PORT
from host.lab.image import GuestImage, build_image, default_cache
from host.lab.procs import interrupt_on_sigterm, kill_group, tail

QGA_PORT = "org.qemu.guest_agent.0"
KVM_PROBE = 30.0  # a working KVM reaches the initramfs in a second or two
USERSPACE = b"Run /init as init process"  # the kernel hands over to the initramfs
PANIC = "Kernel panic - "
BOOT_TIMEOUT = 300.0  # TCG on 2 busy cores: systemd, udev, the agent's Python imports
CPU = {"kvm": "host", "tcg": "max"}  # KVM refuses -cpu max here (MSR 0x10a)
QGA_HINTS = {**protocol.AGENT_HINTS, "peer": "qemu-ga", "garbage": "is this qemu-ga's port?"}

Log = Callable[[str], None]


class VM:
    """A running QEMU guest; ``close()`` (or the ``with`` block) always ends QEMU."""

    def __init__(self, proc: subprocess.Popen[bytes], run_dir: Path, accel: str) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.accel = accel
        self.started = time.monotonic()
        self.console = run_dir / "console.log"
        self.agent_socket = run_dir / "qa.sock"
        self.qga_socket = run_dir / "qga.sock"

    @property
    def agent_endpoint(self) -> str:
        """The agent's endpoint for protocol.Client / ``--quiesce``."""
        return f"unix:{self.agent_socket}"

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill and reap QEMU if it still runs (SIGTERM makes QEMU quit, then SIGKILL)."""
        if self.proc.poll() is None:
            kill_group(self.proc, grace=5.0)

    def elapsed(self) -> float:
        """Seconds since QEMU was started."""
        return time.monotonic() - self.started

    def wait_console(self, marker: bytes, timeout: float) -> bool:
        """True once ``marker`` is on the console; False after ``timeout`` or if QEMU ended."""
        until = time.monotonic() + timeout
        while time.monotonic() < until and self.proc.poll() is None:
            if self.console.is_file() and marker in self.console.read_bytes():
                return True
            time.sleep(0.2)
        return False

    def wait_agent(self, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
        """The agent's first ``ping`` reply, retried while the guest boots."""
        return _until(self, "the agent's ping", timeout, lambda: _ask(self.agent_endpoint, "ping"))

    def wait_qga(self, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
        """qemu-ga's first ``guest-ping`` reply, retried while the guest boots."""
        ep = f"unix:{self.qga_socket}"
        return _until(self, "qemu-ga's guest-ping", timeout, lambda: _ask(ep, "guest-ping"))

    def poweroff(self, timeout: float = 120.0) -> str:
        """Shut the guest down through qemu-ga and wait for QEMU to exit; kill it after
        ``timeout``. Says which of the two happened."""
        try:
            with protocol.Client(f"unix:{self.qga_socket}", 2.0, hints=QGA_HINTS) as c:
                c.call("guest-shutdown", {"mode": "powerdown"}, timeout=2.0)
        except protocol.NoReply:
            pass  # qemu-ga does not answer a shutdown that goes ahead
        except (protocol.Unreachable, protocol.Garbage, protocol.Refused):
            self.close()
            return "killed (qemu-ga did not take the shutdown)"
        try:
            self.proc.wait(timeout)
            return "powered off"
        except subprocess.TimeoutExpired:
            self.close()
            return f"killed (still running {timeout:g} s after guest-shutdown)"

    def guest_run(self, argv: list[str], timeout: float = 60.0) -> tuple[int, str]:
        """Run a command in the guest through qemu-ga (guest-exec): its exit code and its
        output (stdout, then stderr). LabError if it runs past ``timeout``."""
        with protocol.Client(f"unix:{self.qga_socket}", 2.0, hints=QGA_HINTS) as c:
            args = {"path": argv[0], "arg": argv[1:], "capture-output": True}
            pid = c.call("guest-exec", args, timeout=10.0)["pid"]
            until = time.monotonic() + timeout
            while time.monotonic() < until:
                state = c.call("guest-exec-status", {"pid": pid}, timeout=10.0)
                if state.get("exited"):
                    out = b"".join(
                        base64.b64decode(state.get(k, "")) for k in ("out-data", "err-data")
                    )
                    return int(state.get("exitcode", -1)), out.decode("utf-8", "replace")
                time.sleep(0.5)
        raise LabError(f"guest: {' '.join(argv)} still running after {timeout:g} s")


def _ask(endpoint: str, command: str) -> dict[str, Any]:
    """One short request on a fresh connection."""
    hints = QGA_HINTS if command.startswith("guest-") else None
    with protocol.Client(endpoint, 2.0, hints=hints) as c:
        reply = c.call(command, timeout=3.0)
    return reply if isinstance(reply, dict) else {"return": reply}


def _until(
    vm: VM, what: str, timeout: float, attempt: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Retry ``attempt`` each second until it answers; LabError on timeout or QEMU's exit."""
    until = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < until:
        if vm.proc.poll() is not None:
            raise LabError(
                f"{exit_reason(vm)} before {what} came; the console ({vm.console}):\n"
                f"{tail(vm.console)}\nQEMU: {tail(vm.run_dir / 'qemu.log', 5)}"
            )
        try:
            return attempt()
        except (protocol.Unreachable, protocol.Garbage, protocol.Refused) as err:
            last = str(err)
        time.sleep(1.0)
    raise LabError(
        f"no answer to {what} within {timeout:g} s of boot ({vm.accel}); last: {last}; "
        f"the console ({vm.console}):\n{tail(vm.console)}"
    )


def exit_reason(vm: VM) -> str:
    """Why QEMU ended, for a message: the kernel's panic line if the console has one."""
    text = vm.console.read_text(errors="replace") if vm.console.is_file() else ""
    panics = [line.strip() for line in text.splitlines() if PANIC in line]
    if panics:
        return f"the guest's kernel panicked ({panics[0][panics[0].index(PANIC) :][:160]})"
    return f"QEMU exited ({vm.proc.returncode})"


def root_drive(image: GuestImage) -> list[str]:
    """The default disks: the image's root, its writes kept in a throw-away overlay."""
    return ["-drive", f"file={image.root},format=raw,if=virtio,snapshot=on"]


def qemu_command(
    image: GuestImage,
    run_dir: Path,
    accel: str,
    extra: list[str],
    disks: list[str] | None = None,
    kernel_args: str = "",
) -> list[str]:
    """QEMU's arguments: no default devices, the image's kernel, console and two ports;
    ``disks`` (QEMU arguments) instead of the image's root opened snapshot=on."""
    cmdline = f"{image.cmdline} {kernel_args}".strip()
    ports: list[str] = ["-device", "virtio-serial-pci"]
    for chardev, sock, name in (("qa", "qa.sock", AGENT_PORT), ("qga", "qga.sock", QGA_PORT)):
        ports += ["-chardev", f"socket,id={chardev},path={run_dir / sock},server=on,wait=off"]
        ports += ["-device", f"virtserialport,chardev={chardev},name={name}"]
    return [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-accel", accel, "-cpu", CPU[accel], "-m", "1024", "-smp", "2",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
        *(root_drive(image) if disks is None else disks),
        "-device", "virtio-rng-pci", "-serial", f"file:{run_dir / 'console.log'}",
        *ports, *extra,
    ]  # fmt: skip


def start(
    image: GuestImage,
    run_dir: Path,
    accel: str,
    extra: list[str] | None = None,
    *,
    disks: list[str] | None = None,
    kernel_args: str = "",
) -> VM:
    """Start QEMU in its own session; LabError if it exits at once (bad arguments)."""
    cmd = qemu_command(image, run_dir, accel, extra or [], disks, kernel_args)
    env = {**os.environ, "TMPDIR": str(run_dir)}  # where snapshot=on keeps its overlay
    with open(run_dir / "qemu.log", "ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
    vm = VM(proc, run_dir, accel)
    try:
        proc.wait(0.5)
    except subprocess.TimeoutExpired:
        return vm
    raise LabError(
        f"QEMU ({accel}) exited at once ({proc.returncode}):\n{tail(run_dir / 'qemu.log')}"
    )


_NO_KVM: list[str] = []  # why KVM failed in this process: later boots go straight to TCG


def boot(
    image: GuestImage,
    run_dir: Path,
    *,
    log: Log,
    extra: list[str] | None = None,
    disks: list[str] | None = None,
    kernel_args: str = "",
) -> VM:
    """Start the guest with KVM if a bounded KVM boot reaches userspace, else with TCG (a
    failed probe is remembered for the rest of the process)."""
    choice = os.environ.get("QUIESCE_VM_ACCEL", "")
    if choice not in ("", "kvm", "tcg"):
        raise LabError(f"QUIESCE_VM_ACCEL={choice!r}: must be kvm or tcg (or unset: probe)")
    args: dict[str, Any] = {"disks": disks, "kernel_args": kernel_args}
    if choice:
        return start(image, run_dir, choice, extra, **args)
    if _NO_KVM:
        log(f"KVM: {_NO_KVM[0]} at the first boot; using TCG")
        return start(image, run_dir, "tcg", extra, **args)
    vm = _probe_kvm(image, run_dir, extra, log, args)
    return vm if vm is not None else start(image, run_dir, "tcg", extra, **args)


def _probe_kvm(
    image: GuestImage, run_dir: Path, extra: list[str] | None, log: Log, args: dict[str, Any]
) -> VM | None:
    """A KVM guest that reached the initramfs within KVM_PROBE seconds, or None (the failed
    attempt's console and QEMU log are kept as console-kvm.log and qemu-kvm.log)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("KVM: no usable /dev/kvm; using TCG")
        _NO_KVM.append("no usable /dev/kvm")
        return None
    try:
        vm = start(image, run_dir, "kvm", extra, **args)
    except LabError:
        log(f"KVM: QEMU did not start ({_last_line(run_dir / 'qemu.log')}); using TCG")
        _NO_KVM.append("QEMU did not start with KVM")
        _set_aside(run_dir)
        return None
    if vm.wait_console(USERSPACE, KVM_PROBE):
        log(f"KVM: userspace at {vm.elapsed():.1f} s; using KVM")
        return vm
    vm.close()
    log(f"KVM: no userspace within {KVM_PROBE:g} s (last: {_last_line(vm.console)!r}); using TCG")
    _NO_KVM.append(f"no userspace within {KVM_PROBE:g} s")
    _set_aside(run_dir)
    return None


def _set_aside(run_dir: Path) -> None:
    """Keep a failed KVM attempt's logs under other names; the TCG boot starts afresh."""
    for name in ("console", "qemu"):
        if (run_dir / f"{name}.log").is_file():
            (run_dir / f"{name}.log").rename(run_dir / f"{name}-kvm.log")


def _last_line(path: Path) -> str:
    lines = tail(path, 3).strip().splitlines()
    return lines[-1][-80:] if lines else ""


# -- the smoke test (scripts/guest-smoke) ----------------------------------------------------
def main(argv: list[str]) -> int:
    """Build or reuse the image, boot it, wait for the agent and qemu-ga, power off; each
    step's time printed. ``--keep`` keeps the run folder (console, QEMU log)."""
    start_at = time.monotonic()
    interrupt_on_sigterm()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - start_at:7.1f} s] {message}", flush=True)

    run_dir = Path(tempfile.mkdtemp(prefix="qvm-"))  # short: socket paths < 108 bytes
    try:
        image = build_image(default_cache(), log=say)
        say(f"image {image.key} ({'built' if image.built else 'from the cache'})")
        with boot(image, run_dir, log=say) as vm:
            _smoke(vm, say)
        return 0
    except LabError as err:
        print(f"guest-smoke: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("guest-smoke: interrupted; QEMU was stopped", file=sys.stderr)
        return 130
    finally:
        if "--keep" in argv:
            say(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def _unit_times(vm: VM) -> str:
    """The agent unit's state and how long it took from exec to READY=1, from systemd."""
    props = "ActiveState,ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic"
    _, out = vm.guest_run(["/bin/systemctl", "show", "-p", props, "quiesce-agent.service"])
    got = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    started = int(got.get("ExecMainStartTimestampMonotonic") or 0)
    ready = int(got.get("ActiveEnterTimestampMonotonic") or 0)
    took = f", exec to ready {(ready - started) / 1e6:.1f} s" if started and ready else ""
    return f"{got.get('ActiveState', '?')}{took} (guest clock: ready at {ready / 1e6:.1f} s)"


def _smoke(vm: VM, say: Log) -> None:
    """The steps after QEMU started, each with the guest's time since QEMU's start."""
    say(f"QEMU started ({vm.accel}); console {vm.console}")
    if vm.wait_console(USERSPACE, BOOT_TIMEOUT):
        say(f"initramfs running at {vm.elapsed():.1f} s")
    if vm.wait_console(b"Welcome to", BOOT_TIMEOUT):
        say(f"systemd running at {vm.elapsed():.1f} s")
    pong = vm.wait_agent()
    say(f"agent ping answered at {vm.elapsed():.1f} s: {pong}")
    vm.wait_qga()
    say(f"qemu-ga guest-ping answered at {vm.elapsed():.1f} s")
    say(f"agent unit: {_unit_times(vm)}")
    rc, out = vm.guest_run(["/usr/sbin/qemu-ga", "-D"])
    hook = [line for line in out.splitlines() if line.startswith("fsfreeze-hook=")]
    say(f"qemu-ga config: {hook[0] if hook else 'no fsfreeze-hook (the bridge would never run)'}")
    t = time.monotonic()
    how = vm.poweroff()
    say(f"{how} in {time.monotonic() - t:.1f} s")
