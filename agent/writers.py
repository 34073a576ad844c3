"""Turning the configuration into writers, fresh for every cycle (scripts and mounts change).

The state machine knows no writer by name; this is the one place that does.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.config import Config
from common.errors import QuiesceError
from hooks import filesystems, scripts
from hooks.base import Writer
from hooks.mysql.writer import MysqlWriter
from hooks.postgres.writer import PostgresWriter


class UnknownWriter(QuiesceError):
    code = "BadRequest"
    exit_code = 2


def problems(config: Config) -> list[str]:
    """What the configuration names that is not there, each naming its key: not an error
    of the file (a package may create the folder later), but ``check`` fails on it and the
    daemon logs it once at start. An empty scripts folder is fine."""
    found = []
    if config.scripts is not None and not os.path.isdir(config.scripts.dir):
        what = "is not a folder" if os.path.exists(config.scripts.dir) else "does not exist"
        found.append(
            f"scripts.dir: {config.scripts.dir} {what}, so no backupScripts.d script runs; "
            f"create it (an empty folder is fine) or fix scripts.dir in {config.source}"
        )
    return found


def build_all(config: Config, notes: list[str]) -> list[Writer]:
    """The configured writers in freeze order; ``notes`` gets what the report should say."""
    writers: list[Writer] = []
    if config.scripts is not None:
        s = config.scripts
        writers += scripts.build(
            s.dir, s.timeout_seconds, s.legacy_dir, s.require_root_owner, notes, s.concurrent
        )
    writers += [MysqlWriter(m) for m in config.mysql]
    writers += [PostgresWriter(p) for p in config.postgres]
    if config.filesystems is not None and config.filesystems.mounts == ():
        notes.append("filesystems.mounts is an empty list: no filesystem is frozen")
    elif config.filesystems is not None:
        f = config.filesystems
        writers.append(
            filesystems.FilesystemsWriter(f.mounts, f.exclude, protect=(config.state_dir,))
        )
    return writers


def select(writers: list[Writer], names: list[str] | None) -> list[Writer]:
    """Keep the writers named by kind (``postgres``) or kind:name (``postgres:main``); a name
    with a leading ``-`` (the freeze's ``skip``) leaves that writer out instead, and leaving
    out one that is not configured is no error."""
    if names is None:
        return writers
    wanted = [n for n in names if not n.startswith("-")]
    skipped = {n[1:] for n in names if n.startswith("-")}
    chosen = [] if wanted else list(writers)
    for name in wanted:
        hits = [w for w in writers if name in (w.kind, w.qualified_name)]
        if not hits:
            known = sorted({w.kind for w in writers} | {w.qualified_name for w in writers})
            raise UnknownWriter(f"no writer {name!r}; configured: {', '.join(known) or 'none'}")
        chosen += [w for w in hits if w not in chosen]
    return [w for w in writers if w in chosen and not skipped & {w.kind, w.qualified_name}]


def factory(config: Config) -> Callable[[list[str] | None], tuple[list[Writer], list[str]]]:
    def make(names: list[str] | None) -> tuple[list[Writer], list[str]]:
        notes: list[str] = []
        return select(build_all(config, notes), names), notes

    return make
