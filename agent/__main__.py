"""quiesce-agent: the guest daemon and its command-line client.

A start imports what its verb needs and no more (as ``quiesce-host`` does): the client verbs
(agent/verbs_client.py) only the protocol, the configuration and the error classes; serve,
check and recover (agent/verbs_daemon.py) the daemon with every writer, all of it at once
before anything is frozen. ``--config`` goes before or after the verb.

Exit codes (stable, for scripts): the one table of common/errors.py, shared with
``quiesce-host``; ``--help`` lists the ones this command returns. A client verb returns the
code of the error class the daemon answered with.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import config as config_mod
from agent import verbs_client
from common.errors import EXIT_INTERRUPTED, QuiesceError, exit_code_help

# what quiesce-agent can return: a client verb gives the code of the class the daemon sent
EXIT_CODES = [0, 2, 3, 4, 5, 6, 7, 8, EXIT_INTERRUPTED]
LOCAL_VERBS = {  # verb -> its line in --help; they run in agent/verbs_daemon.py
    "serve": "run the daemon in the foreground",
    "check": "validate the config and every writer without freezing",
    "recover": "thaw whatever a dead daemon left frozen (ExecStopPost)",
}
DRIVERS_HINT = (
    "install the guest's part: pip install 'quiesce-agent[guest]', or Debian's quiesce-agent "
    "package (python3-psycopg, python3-pymysql)"
)


DESCRIPTION = """\
Freeze applications and filesystems for an application-consistent VM snapshot, hold them
for seconds (never more than freeze.ceiling_seconds, at most 60), and always thaw.

  quiesce-agent serve                 run the daemon (systemd runs it for you)
  quiesce-agent freeze --label NAME   freeze every configured writer, then take the snapshot
  quiesce-agent thaw                  thaw; the reply reports each writer's timings/artifacts
  quiesce-agent abort                 the snapshot failed: undo with freezeFail semantics
  quiesce-agent status | writers      what the agent is doing / which writers it has
  quiesce-agent check                 validate the config and every writer, freeze nothing
"""


def _add_config(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--config",
        default=default,
        metavar="FILE",
        help=f"configuration file (default: {config_mod.DEFAULT_PATH}); before or after the verb",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quiesce-agent",
        description=DESCRIPTION,
        epilog=exit_code_help(EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config(p, None)  # None: not given (the client then reads the default only if there)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in LOCAL_VERBS.items():
        _add_config(sub.add_parser(name, help=text), argparse.SUPPRESS)
    for name, text in verbs_client.VERBS.items():
        verb = sub.add_parser(name, help=text)
        _add_config(verb, argparse.SUPPRESS)  # after the verb: overrides one given before
        verbs_client.build(verb, name)
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command not in LOCAL_VERBS:
        return verbs_client.run(args)
    if args.config is None:
        args.config = config_mod.DEFAULT_PATH
    try:
        local = importlib.import_module("agent.verbs_daemon")
    except ImportError as err:  # a host-only install has no database drivers
        print(f"quiesce-agent: {args.command} needs {err.name}: {DRIVERS_HINT}", file=sys.stderr)
        return 2
    return int(local.run(args))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except QuiesceError as err:
        print(f"quiesce-agent: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the last place: say it and fail with 2
        # (the daemon's verbs log their own, agent/verbs_daemon.py: the client sets up no
        # logging, which would cost it the logging package's import)
        print(f"quiesce-agent: unexpected error: {err!r}", file=sys.stderr)
        sys.excepthook(type(err), err, err.__traceback__)
        return 2


if __name__ == "__main__":
    sys.exit(main())
