"""``quiesce-host demo [--vm]``: the verb's arguments; host.lab.demo runs the local demo,
host.lab.vmdemo the one in a QEMU guest.

The lab is imported only when the demo runs: it brings psycopg, pymysql and yaml, which no
other verb needs and which every start of quiesce-host (``--help`` too) would load for
nothing.
"""

from __future__ import annotations

import argparse

DEFAULTS = {False: (3.0, 200.0), True: (5.0, 50.0)}  # (seconds, rate): local, --vm (TCG-sized)


def build(p: argparse.ArgumentParser) -> None:
    """The arguments of ``demo`` (main made its parser)."""
    p.add_argument(
        "--vm",
        action="store_true",
        help="the same demo across a real VM boundary: a QEMU guest booted on engine disks "
        "served over NBD, the agent on virtio-serial (builds the guest image once: minutes)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        help="load before and after the snapshot (default 3; 5 with --vm)",
    )
    p.add_argument(
        "--rate",
        type=float,
        help="inserts per second into each database (default 200; 50 with --vm)",
    )
    p.add_argument(
        "--boot-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="--vm: QEMU's start to the guest fully up, at most (default 300)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the lab in place for a look (--vm: its files; QEMU is stopped)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: host.lab pulls in the database drivers (psycopg, pymysql),
    # which only the demo uses; a test holds host.cli.main to not importing them
    seconds, rate = DEFAULTS[args.vm]
    seconds = seconds if args.seconds is None else args.seconds
    rate = rate if args.rate is None else args.rate
    if args.vm:
        from host.lab.vmdemo import run_vm_demo

        return run_vm_demo(seconds, rate, keep=args.keep, boot_timeout=args.boot_timeout)
    from host.lab.demo import run_demo

    return run_demo(seconds=seconds, rate=rate, keep=args.keep)
