"""``quiesce-host``: the command line of the host side, thin over the engine.

One module per verb group (borg's way) over ``_common`` (open the disk here or ask the server
that holds it, DISK_HELP, sizes, the error line): ``disk`` (create, info, check, export),
``vm`` (create, add-disk, info, check),
``snapshot`` (create [--quiesce], list, revert, delete, show, restore-artifacts), ``serve``,
``rbd-watch`` and ``demo``. ``VERBS`` lists them; a start imports the module of the verb it
runs and no other (``--help`` none), whose ``build(parser)`` declares the verb's sub-verbs or
arguments and sets ``func``; a verb returns its exit code. The engine never sees argparse.

Exit codes: the one table of common/errors.py (``MEANINGS``), shared with ``quiesce-agent``;
``--help`` lists them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from common.errors import (
    EXIT_INTERRUPTED,
    EXIT_OUTPUT_CLOSED,
    QuiesceError,
    exit_code_help,
)

# what quiesce-host can return (the agent's own failures reach it as 9, or 20 in a quiesce)
EXIT_CODES = [0, 1, 2, 7, 8, 9, *range(10, 22), EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED]

# verb -> (the module that builds its parser and runs it, its line in --help)
VERBS: dict[str, tuple[str, str]] = {
    "disk": ("host.cli.disk", "create, inspect, check and export disks"),
    "vm": ("host.cli.vm", "create VMs (folders of disks with one snapshot tree), add disks, check"),
    "snapshot": (
        "host.cli.snapshot",
        "create, list, revert and delete snapshots of a disk or of a VM (all its disks as one)",
    ),
    "serve": (
        "host.cli.serve",
        "serve a disk's (or every disk of a VM's) current state over NBD and/or FUSE",
    ),
    "rbd-watch": (
        "host.cli.rbd_watch",
        "freeze a guest for every RBD snapshot anybody takes of its images",
    ),
    "demo": (
        "host.cli.demo",
        "a quiesced snapshot of a throw-away PostgreSQL + MariaDB lab, a revert, and a verdict "
        "(root)",
    ),
}


class _Parser(argparse.ArgumentParser):
    """A verb's parser, and every sub-verb's below it (argparse makes those of the parent's
    class): each takes the global flags too, so they work before or after the verb
    (``quiesce-host -v disk info D`` and ``quiesce-host disk info D -v``). Given after the
    verb they override the value given before it; not given there, they leave it alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _global_flags(self, argparse.SUPPRESS)


def _global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log debug messages"
    )


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The command line, with the sub-verbs and arguments of the verbs in ``load`` (default:
    every verb). Every verb is listed in --help either way: main() loads only the module of
    the verb it runs, so that a start imports what that verb needs and no more."""
    parser = argparse.ArgumentParser(
        prog="quiesce-host",
        description="Host side of quiesce-agent: VMware-style delta disks and their snapshots.",
        epilog=exit_code_help(EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_flags(parser, False)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_Parser)
    wanted = set(VERBS if load is None else load)
    for name, (module, help_line) in VERBS.items():
        verb = verbs.add_parser(name, help=help_line)
        if name in wanted:
            _build(name, module, verb)
    return parser


def _build(name: str, module: str, verb: argparse.ArgumentParser) -> None:
    try:
        build = importlib.import_module(module).build
    except ImportError as err:  # a part of the install is missing (serve's binding, say)
        missing = err
        verb.set_defaults(func=lambda args: _unavailable(name, missing))
    else:
        build(verb)


def _verb_of(argv: Sequence[str]) -> list[str]:
    """The verb of a command line (its first word that is not an option), if any."""
    return [word for word in argv if not word.startswith("-")][:1]  # no global flag takes a value


def _unavailable(verb: str, err: Exception) -> int:
    print(f"quiesce-host: error: {verb} is unavailable: {err}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(load=_verb_of(words)).parse_args(words)
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
