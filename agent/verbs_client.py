"""The client verbs of ``quiesce-agent``: ping, freeze, thaw, abort, status, writers.

They import the protocol, the configuration (to find the socket: ``listen.unix``) and the
error classes the daemon answers with, and nothing of the daemon, the writers or a database
driver: a bridge script calls one of them per hook invocation, in guests where starting
Python is slow (``benchmarks/cli_start.py`` measures it).

Which configuration: the one ``--config`` names (it must exist, unless it is the default
path), else the default file if it exists. A configuration that exists and is broken is
refused (ConfigError, exit 3) rather than ignored. ``--socket`` overrides ``listen.unix``;
with it the configuration is read only when ``--config`` names one.

Raises: ConfigError (a broken or unusable configuration), the protocol's Unreachable,
NoReply, Garbage; a daemon's error reply is printed and returned as its exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from agent import config as config_mod
from agent import errors as _errors  # noqa: F401 - their classes answer over the wire
from agent import protocol
from common.errors import ConfigError, QuiesceError, exit_code_by_class
from common.files import atomic_write
from common.tables import table
from hooks import errors as _hook_errors  # noqa: F401 - WriterFailed & co answer too

VERBS = {
    "ping": "is the daemon alive?",
    "freeze": "freeze the writers (prepare, then lock in order)",
    "thaw": "thaw after the snapshot",
    "abort": "undo a freeze whose snapshot failed (freezeFail)",
    "status": "state, seconds left to the ceiling, last report",
    "writers": "each writer and its state",
}


def build(verb: argparse.ArgumentParser, name: str) -> None:
    """The arguments of one client verb."""
    verb.add_argument(
        "--socket",
        help="the daemon's socket (default: listen.unix of the configuration, "
        f"else {protocol.DEFAULT_SOCKET})",
    )
    verb.add_argument("--json", action="store_true", help="print the raw reply as JSON")
    verb.add_argument(
        "--wait",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="how long to wait for the reply (default: %(default)s)",
    )
    if name == "freeze":
        verb.add_argument("--label", default="snapshot", help="the snapshot's name")
        verb.add_argument("--writers", help="comma-separated subset, e.g. postgres,scripts")
        verb.add_argument(
            "--skip",
            help="comma-separated writers to leave out, e.g. filesystems (what a hypervisor "
            "tool freezes itself: the bridge's case)",
        )
    if name in ("freeze", "thaw", "abort"):
        verb.add_argument(
            "--record",
            metavar="FILE",
            help="also write the reply (or the error) as JSON to FILE, replaced atomically "
            "(the qemu-ga bridge's record, read by quiesce-host --quiesce qemu-ga:...)",
        )
        verb.add_argument(
            "--timeout",
            type=float,
            help="freeze budget in seconds (at most freeze.timeout_seconds)",
        )


def socket_path(config: str | None, socket: str | None) -> str:
    """The socket to call: ``socket``, else the configuration's ``listen.unix``.
    ``config`` is the file --config named (None: not given). The default file may be
    missing (the daemon's default socket then); any other file named must exist."""
    if socket and config is None:
        return socket
    path = config if config is not None else config_mod.DEFAULT_PATH
    if path == config_mod.DEFAULT_PATH and not os.path.exists(path):
        return socket or protocol.DEFAULT_SOCKET  # no configuration here: the defaults
    cfg = config_mod.load(path)
    if socket:
        return socket
    if cfg.listen.unix is None:
        raise ConfigError(
            f"{cfg.source}: listen.unix is null (the daemon has no Unix socket), so the "
            "client verbs cannot reach it; give --socket, or set listen.unix"
        )
    return cfg.listen.unix


def run(args: argparse.Namespace) -> int:
    """Send the verb to the daemon, print the reply; the exit code of its error, or 0."""
    arguments: dict[str, Any] = {}
    if args.command == "freeze":
        arguments["label"] = args.label
        if args.writers:
            arguments["writers"] = [w.strip() for w in args.writers.split(",") if w.strip()]
        if args.skip:
            arguments["skip"] = [w.strip() for w in args.skip.split(",") if w.strip()]
        if args.timeout:
            arguments["timeout"] = args.timeout
    record = getattr(args, "record", None)
    try:
        path = socket_path(args.config, args.socket)
        with protocol.Client(protocol.Endpoint("unix", path=path)) as client:
            try:
                reply = protocol.success(client.call(args.command, arguments, timeout=args.wait))
            except protocol.Refused as err:  # the daemon's answer: printed, and its exit code
                reply = protocol.failure(err.error_class, err.desc, err.data)
    except QuiesceError as err:  # no answer at all: recorded too, then raised as before
        if record:
            _record(record, args.command, protocol.failure(err.code, str(err)))
        raise
    if record:
        _record(record, args.command, reply)
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        _print_human(args.command, reply)
    if "error" in reply:
        return exit_code_by_class().get(reply["error"]["class"], 2)
    return 0


def _record(path: str, command: str, reply: dict[str, Any]) -> None:
    """The reply as JSON in ``path`` (its folder made if missing), with the verb it answers."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, json.dumps({"verb": command, **reply}, indent=1) + "\n", mode=0o644)


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
