"""``quiesce-host demo``: the verb's arguments; the demo itself is host.lab.demo."""

from __future__ import annotations

from typing import Any

from host.lab.demo import run_demo


def add_parser(verbs: Any) -> None:
    p = verbs.add_parser(
        "demo",
        help="a quiesced snapshot of a throw-away PostgreSQL + "
        "MariaDB lab, a revert, and a verdict (root)",
    )
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
    p.set_defaults(func=run_demo)
