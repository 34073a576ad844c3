"""``quiesce-host rbd-watch rbd:POOL/GROUP --quiesce ENDPOINT``: hold the guest still for
every snapshot anybody takes of its images (``host.snapshots.rbd_watch.Watcher``).

Runs in the foreground until SIGINT or SIGTERM (a systemd unit, beside the VM), printing one
line per quiesce, freeze, thaw and record. Exit codes: 0 stopped, 2 bad arguments or no
librbd, 7 the cluster does not answer.
"""

from __future__ import annotations

import argparse
import signal
import sys

from common.errors import QuiesceError
from host.cli._common import error
from host.snapshots.cycle import MODES
from host.snapshots.rbd_watch import Watcher


def build(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Hold the images of rbd:POOL/GROUP (or rbd:POOL/IMAGE) open with a librbd quiesce "
        "watch: before any client's 'rbd snap create' or 'rbd group snap create' of them "
        "(OpenStack, a backup tool, cron), freeze the guest through its agent; thaw when "
        "librbd says the snapshot is taken; record the agent's report with the snapshot. "
        "Stop it (and the VM) before a revert."
    )
    parser.add_argument("target", metavar="rbd:POOL/GROUP", help="the VM's RBD group or image")
    parser.add_argument(
        "--quiesce",
        metavar="ENDPOINT",
        required=True,
        help="the guest agent: unix:PATH, vsock:CID:PORT",
    )
    parser.add_argument(
        "--quiesce-mode",
        choices=MODES,
        default="required",
        help="required (default): a failed freeze fails the snapshot (librbd gets -EIO); "
        "preferred: let it go ahead, recorded as crash-consistent",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        watcher = Watcher(args.target, args.quiesce, args.quiesce_mode, say=_say)
    except QuiesceError as err:
        error(str(err))
        return err.exit_code
    signal.signal(signal.SIGTERM, lambda signum, frame: watcher.stop())
    try:
        watcher.run()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()
    _say("stopped")
    return 0


def _say(text: str) -> None:
    print(f"rbd-watch: {text}", flush=True)
    sys.stdout.flush()
