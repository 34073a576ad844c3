"""quiesce-agent: the guest daemon and its command-line client.

Exit codes (stable, for scripts): the one table of common/errors.py, shared with
``quiesce-host``; ``--help`` lists the ones this command returns. A client verb returns the
code of the error class the daemon answered with.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from agent import config as config_mod
from agent import daemon, logbuffer, marker, protocol
from agent import errors as _errors  # noqa: F401 - their classes answer over the wire
from agent.writers import build_all
from common.errors import (
    EXIT_INTERRUPTED,
    QuiesceError,
    exit_code_by_class,
    exit_code_help,
)
from common.tables import table
from hooks.errors import WriterError

# what quiesce-agent can return: a client verb gives the code of the class the daemon sent
EXIT_CODES = [0, 2, 3, 4, 5, 6, 7, 8, EXIT_INTERRUPTED]


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quiesce-agent",
        description=DESCRIPTION,
        epilog=exit_code_help(EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default=config_mod.DEFAULT_PATH,
        help="configuration file (default: %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run the daemon in the foreground")
    sub.add_parser("check", help="validate the config and every writer without freezing")
    sub.add_parser("recover", help="thaw whatever a dead daemon left frozen (ExecStopPost)")
    for name, text in (
        ("ping", "is the daemon alive?"),
        ("freeze", "freeze the writers (prepare, then lock in order)"),
        ("thaw", "thaw after the snapshot"),
        ("abort", "undo a freeze whose snapshot failed (freezeFail)"),
        ("status", "state, seconds left to the ceiling, last report"),
        ("writers", "each writer and its state"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument(
            "--socket",
            help="the daemon's socket (default: listen.unix of the config, "
            f"else {protocol.DEFAULT_SOCKET})",
        )
        c.add_argument("--json", action="store_true", help="print the raw reply as JSON")
        c.add_argument(
            "--wait",
            type=float,
            default=90.0,
            metavar="SECONDS",
            help="how long to wait for the reply (default: %(default)s)",
        )
        if name == "freeze":
            c.add_argument("--label", default="snapshot", help="the snapshot's name")
            c.add_argument("--writers", help="comma-separated subset, e.g. postgres,scripts")
            c.add_argument(
                "--timeout",
                type=float,
                help="freeze budget in seconds (at most freeze.timeout_seconds)",
            )
    return p


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    try:
        cfg = config_mod.load(args.config)
        if cfg.listen.unix:
            return cfg.listen.unix
    except QuiesceError:
        pass
    return protocol.DEFAULT_SOCKET


def _client_command(args: argparse.Namespace) -> int:
    arguments: dict[str, Any] = {}
    if args.command == "freeze":
        arguments["label"] = args.label
        if args.writers:
            arguments["writers"] = [w.strip() for w in args.writers.split(",") if w.strip()]
        if args.timeout:
            arguments["timeout"] = args.timeout
    with protocol.Client(protocol.Endpoint("unix", path=_socket_path(args))) as client:
        try:
            reply = protocol.success(client.call(args.command, arguments, timeout=args.wait))
        except protocol.Refused as err:  # the daemon's answer: printed, and its exit code
            reply = protocol.failure(err.error_class, err.desc, err.data)
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        _print_human(args.command, reply)
    if "error" in reply:
        return exit_code_by_class().get(reply["error"]["class"], 2)
    return 0


def _print_human(command: str, reply: dict[str, Any]) -> None:
    if "error" in reply:
        err = reply["error"]
        print(f"error ({err['class']}): {err['desc']}", file=sys.stderr)
        report = (err.get("data") or {}).get("report")
        if report:
            _print_report(report)
        return
    ret = reply["return"]
    if command == "ping":
        print(f"pong (pid {ret['pid']})")
    elif command == "status":
        left = ret["seconds_left"]
        print(
            f"state: {ret['state']}"
            + (f" ({ret['label']}, {left:.1f} s to the ceiling)" if left is not None else "")
        )
        if ret.get("last_report"):
            _print_report(ret["last_report"])
    elif command == "writers":
        _table(
            ["WRITER", "STATE", "DETAIL"],
            [
                [
                    w["name"],
                    w.get("state", ""),
                    w.get("note") or w.get("path") or w.get("mounts") or w.get("last_error") or "",
                ]
                for w in ret
            ],
        )
    else:
        _print_report(ret)


def _print_report(r: dict[str, Any]) -> None:
    t = r["timings"]
    print(
        f"{r['label']}: {r['outcome']}, consistency {r['consistency']}, held "
        f"{_ms(t['held_ms'])} (prepare {_ms(t['prepare_ms'])}, freeze {_ms(t['freeze_ms'])})"
    )
    _table(
        ["WRITER", "STATE", "PREPARE", "FREEZE", "THAW", "ERROR"],
        [
            [
                w["name"],
                w["state"],
                _ms(w.get("prepare_ms")),
                _ms(w.get("freeze_ms")),
                _ms(w.get("thaw_ms") or w.get("abort_ms")),
                w["error"] or "",
            ]
            for w in r["writers"]
        ],
    )
    for note in r.get("notes", []):
        print(f"  note: {note}")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def _table(head: list[str], rows: list[list[Any]]) -> None:
    print("\n".join(table(head, rows)))


def _check(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    print(f"{cfg.source}: configuration is valid")
    notes: list[str] = []
    worst = 0
    for writer in build_all(cfg, notes):
        try:
            for note in writer.check():
                print(f"  {writer.qualified_name}: {note}")
            print(f"ok    {writer.qualified_name}")
        except QuiesceError as err:
            print(f"FAIL  {writer.qualified_name}: {err}")
            worst = max(worst, WriterError.exit_code)
    for note in notes:
        print(f"note  {note}")
    return worst


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = logbuffer.setup()
    try:
        if args.command == "serve":
            return daemon.run(config_mod.load(args.config), log)
        if args.command == "check":
            return _check(args)
        if args.command == "recover":
            cfg = config_mod.load(args.config)
            for note in marker.recover(cfg.state_dir):
                print(note)
            return 0
        return _client_command(args)
    except QuiesceError as err:
        print(f"quiesce-agent: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the last place: log it and fail with 2
        logging.getLogger("quiesce-agent").exception("unexpected error: %s", err)
        return 2
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
