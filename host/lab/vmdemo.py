"""``quiesce-host demo --vm``: the demo's promise across a real VM boundary.

The same timeline, figures and verdict as the local demo (host.lab.demo), with a QEMU guest
(host.lab.vmlab) in place of this machine:

1. the guest image, from the cache or built (host.lab.image: minutes, once);
2. the VM lab: one engine VM of two disks (root and data), served by one process over NBD
   (an export per disk), QEMU booted on them (KVM where it boots, else TCG); PostgreSQL and
   MariaDB in the guest, their data on the data disk; each boot's moments printed;
3. an insert load from the host into both databases, through QEMU's forwarded ports;
4. ``snapshot create --quiesce`` of the VM through the virtio-serial chardev (the agent
   freezes both databases and the data disk, nothing else; the root is cut at the same
   instant, crash-consistent as a journaled root may be); the record as ``snapshot show``
   prints it, with the pause of client I/O on each disk;
5. keep writing, then power the guest off and stop the server;
6. revert the VM (both disks as one) to the snapshot, serve, boot again;
7. the verdict: every row acknowledged before the freeze reply is there, none sent after the
   thaw reply is; rows in flight at the cut may go either way and are counted.

Everything the lab made is removed at the end, also on Ctrl-C or SIGTERM. On a failure the
tail of the guest's console is shown. Exit codes: 0 the verdict holds, 1 it does not, 2 the
lab could not be built or booted, 130 interrupted, the quiesce's own otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from common.errors import QuiesceError
from host.lab.databases import LabError
from host.lab.demo import (
    SNAPSHOT,
    Clock,
    Verdict,
    latency_lines,
    print_outcome,
    recovery_notes,
    run_lab,
    verdicts_of,
)
from host.lab.image import build_image, default_cache
from host.lab.load import create_tables, present_ids, start_loads
from host.lab.procs import tail
from host.lab.vmlab import BOOT_TIMEOUT, BootTimes, SyncedClient, VMLab
from host.snapshots.cycle import Cycle, Outcome
from host.snapshots.report import full
from host.snapshots.target import ServedTarget

PG_LOG = "tail -n 40 /var/log/postgresql/postgresql-*-main.log"
MARIA_LOG = "journalctl -b -u mariadb.service -o cat --no-pager | tail -n 80"
CONSOLE_LINES = 30


def missing_requirements() -> list[str]:
    """What the VM demo needs and this machine lacks, each with what to do."""
    out = []
    if os.geteuid() != 0:
        out.append("root (mmdebstrap builds the guest image as root): sudo scripts/demo --vm")
    for tool, package in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
    ):
        if shutil.which(tool) is None:
            out.append(f"{tool} (scripts/setup installs {package})")
    return out


def run_vm_demo(
    seconds: float = 5.0,
    rate: float = 50.0,
    keep: bool = False,
    parent: str | None = None,
    boot_timeout: float = BOOT_TIMEOUT,
) -> int:
    """The whole VM demo on a lab made under ``parent`` (default: the temp dir); its exit
    code. ``keep`` leaves the lab's folder (disks, consoles) for a look; QEMU is stopped."""

    def make(clock: Clock) -> VMLab:
        clock.say("the guest image (Debian 12 with the agent; built once, then cached)")
        image = build_image(default_cache(), log=clock.say)
        return VMLab(image, parent=parent, say=clock.say, boot_timeout=boot_timeout)

    def play(lab: VMLab, clock: Clock) -> int:
        verdicts, _, _ = scenario(lab, clock, seconds, rate)
        code = print_outcome(verdicts)
        if code:
            _show_console(lab)
        return code

    def failed(lab: VMLab, err: QuiesceError) -> None:
        if "the console (" not in str(err):
            _show_console(lab)

    def clean_up(lab: VMLab, clock: Clock) -> None:
        if keep:
            lab.power_off(timeout=60.0)
            clock.say(f"--keep: QEMU and the server stopped; the lab's files stay at {lab.root}")
            return
        clock.say("cleaning up the lab (QEMU, the VM's server, the files)")
        lab.close()
        clock.say(f"removed {lab.root}")

    return run_lab("quiesce-host demo --vm", missing_requirements(), make, play, clean_up, failed)


def _show_console(lab: VMLab) -> None:
    console = lab.console
    if console is not None:
        print(f"\nthe guest's console ({console}), its last lines:", file=sys.stderr)
        print(tail(console, CONSOLE_LINES), file=sys.stderr)


def scenario(
    lab: VMLab, clock: Clock, seconds: float, rate: float
) -> tuple[list[Verdict], Outcome, list[BootTimes]]:
    """The demo's steps on a built-to-be lab; the verdicts, the snapshot's outcome and the
    boots' times."""
    clock.say(f"building the VM lab in {lab.root}")
    lab.build()
    _boot(lab, clock)
    create_tables(lab)
    loads = start_loads(lab, rate)
    try:
        clock.say(
            f"insert load running: {rate:g} rows/s into each database, from the host through "
            f"127.0.0.1:{lab.pg.port} and 127.0.0.1:{lab.maria.port}"
        )
        time.sleep(seconds)
        outcome = _snapshot(lab, clock)
        time.sleep(seconds)
    finally:
        for load in loads:
            load.stop()
    errors = [f"{ld.name}: {ld.error}" for ld in loads if ld.error]
    if errors:
        raise LabError("the insert load failed: " + "; ".join(errors))
    m = outcome.moments
    print(latency_lines(loads, m["freeze_sent"], m["thawed"]), flush=True)
    clock.say("powering the guest off")
    clock.say(f"guest {lab.power_off()}; the VM's server stopped")
    lab.revert(SNAPSHOT)
    clock.say(f"reverted the VM (both disks) to {SNAPSHOT!r}: everything after it is discarded")
    _boot(lab, clock)
    notes = recovery_notes(lab.guest_log(PG_LOG), lab.guest_log(MARIA_LOG))
    for line in notes:
        print("    " + line)
    verdicts = verdicts_of(loads, present_ids(lab), m)
    clock.say(f"powering the guest off: {lab.power_off()}")
    print("\nboots (seconds since QEMU started):")
    for boot in lab.boots:
        print("  " + boot.line())
    return verdicts, outcome, lab.boots


def _boot(lab: VMLab, clock: Clock) -> None:
    clock.say(f"boot {len(lab.boots) + 1}: serving the VM's disks over NBD, starting QEMU")
    times = lab.start()
    assert lab.server is not None
    served = ", ".join(f"{name} {uri}" for name, uri in lab.server.uris.items())
    clock.say(f"served by one process: {served}")
    clock.say(times.line())


def _snapshot(lab: VMLab, clock: Clock) -> Outcome:
    """The quiesced snapshot of the VM, both disks cut at one instant, through the chardev."""
    assert lab.vm is not None
    endpoint = lab.vm.agent_endpoint
    clock.say(
        f"quiesced snapshot {SNAPSHOT!r} of the VM, both disks at one cut (agent {endpoint}, "
        "virtio-serial; it freezes the data disk, the root is crash-consistent)"
    )
    outcome = quiesced_snapshot(lab, SNAPSHOT, "quiesce-host demo --vm")
    print("\n".join("    " + line for line in full(outcome.shown())), flush=True)
    return outcome


def quiesced_snapshot(lab: VMLab, name: str, description: str) -> Outcome:
    """``snapshot create --quiesce`` of the VM (every disk at one cut) through the agent's
    chardev, on a connection synced first (``SyncedClient``)."""
    assert lab.vm is not None
    target = ServedTarget(lab.vm_folder)
    cycle = Cycle(target, name, lab.vm.agent_endpoint, description=description)
    cycle.client = SyncedClient(lab.vm.agent_endpoint)
    return cycle.run()
