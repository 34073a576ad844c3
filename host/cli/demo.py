"""``quiesce-host demo``: the verb's arguments; host.lab.demo runs the demo.

The lab is imported only when the demo runs: it brings psycopg, pymysql and yaml, which no
other verb needs and which every start of quiesce-host (``--help`` too) would load for
nothing.
"""

from __future__ import annotations

import argparse


def build(p: argparse.ArgumentParser) -> None:
    """The arguments of ``demo`` (main made its parser)."""
    p.add_argument(
        "--seconds", type=float, default=3.0, help="load before and after the snapshot (default 3)"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="inserts per second into each database (default 200)",
    )
    p.add_argument("--keep", action="store_true", help="leave the lab running (debugging)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: host.lab pulls in the database drivers (psycopg, pymysql),
    # which only the demo uses; a test holds host.cli.main to not importing them
    from host.lab.demo import run_demo

    return run_demo(seconds=args.seconds, rate=args.rate, keep=args.keep)
