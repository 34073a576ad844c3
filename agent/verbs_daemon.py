"""The verbs of ``quiesce-agent`` that run the agent here: serve, check, recover.

Imported only for those verbs (agent/__main__.py), and it imports, at its top, everything
the daemon will ever run, the writers and their database drivers included: by the time
``serve`` listens, nothing is left to load from a filesystem it may freeze.

Raises: ConfigError (exit 3), and whatever the daemon raises at start.
"""

from __future__ import annotations

import argparse
import logging

from agent import config as config_mod
from agent import daemon, logbuffer, marker
from agent.logbuffer import HoldingHandler
from agent.server import port_problem
from agent.writers import build_all, problems
from common.errors import ConfigError, QuiesceError
from hooks.errors import WriterError

logger = logging.getLogger("quiesce-agent")


def run(args: argparse.Namespace) -> int:
    """Run ``args.command`` (serve, check or recover) with the daemon's logging."""
    log = logbuffer.setup()
    try:
        if args.command == "serve":
            return serve(args, log)
        return check(args) if args.command == "check" else recover(args)
    except QuiesceError:
        raise  # the one line main() prints, with its exit code
    except Exception as err:  # noqa: BLE001 - the last place: log it and fail with 2
        logger.exception("unexpected error: %s", err)
        return 2
    finally:
        logging.shutdown()


def serve(args: argparse.Namespace, log: HoldingHandler) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    cfg = config_mod.load(args.config)
    for problem in problems(cfg):  # once at start; the daemon still serves the rest
        logger.warning("%s", problem)
    return daemon.run(cfg, log)


def recover(args: argparse.Namespace) -> int:
    """Thaw whatever a dead daemon left frozen (the unit's ExecStopPost=)."""
    cfg = config_mod.load(args.config)
    for note in marker.recover(cfg.state_dir):
        print(note)
    return 0


def check(args: argparse.Namespace) -> int:
    """Validate the configuration and every writer; freeze nothing."""
    cfg = config_mod.load(args.config)
    print(f"{cfg.source}: configuration is valid")
    worst = 0
    found = problems(cfg)
    if cfg.listen.virtio_serial:
        found += [p for p in [port_problem(cfg.listen.virtio_serial)] if p]
    for problem in found:
        print(f"FAIL  {problem}")
        worst = max(worst, ConfigError.exit_code)
    notes: list[str] = []
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
