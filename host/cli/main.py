"""``quiesce-host``: the command line of the host side, thin over the engine.

One module per verb group (borg's way) over ``_common`` (open the disk here or ask the server
that holds it, DISK_HELP, sizes, the error line): ``disk`` (create, info, check, export),
``snapshot`` (create [--quiesce], list, revert, delete, show, restore-artifacts), ``serve``
and ``demo``. Each module adds its parser and sets ``func``; a verb returns its exit code.
The engine never sees argparse.

Exit codes: the one table of common/errors.py (``MEANINGS``), shared with ``quiesce-agent``;
``--help`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from common.errors import (
    EXIT_INTERRUPTED,
    EXIT_OUTPUT_CLOSED,
    QuiesceError,
    exit_code_help,
)
from host.cli import demo as cli_demo
from host.cli import disk as cli_disk
from host.cli import snapshot as cli_snapshot

# what quiesce-host can return (the agent's own failures reach it as 9, or 20 in a quiesce)
EXIT_CODES = [0, 1, 2, 7, 8, 9, *range(10, 22), EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quiesce-host",
        description="Host side of quiesce-agent: VMware-style delta disks and their snapshots.",
        epilog=exit_code_help(EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    cli_disk.add_parser(verbs)
    cli_snapshot.add_parser(verbs)
    try:
        from host.cli.serve import add_serve_parser
    except ImportError as err:  # the servers are optional (their binding may be missing)
        missing = err
        serve = verbs.add_parser("serve", help=f"unavailable: {missing}")
        serve.set_defaults(func=lambda args: _unavailable(missing))
    else:
        add_serve_parser(verbs)
    cli_demo.add_parser(verbs)
    return parser


def _unavailable(err: Exception) -> int:
    print(f"quiesce-host: error: serve is unavailable: {err}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except QuiesceError as err:
        print(f"quiesce-host: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("quiesce-host: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # 'disk info --json | head': the reader left, as with SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return EXIT_OUTPUT_CLOSED


if __name__ == "__main__":
    sys.exit(main())
