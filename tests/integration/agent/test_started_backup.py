"""A PostgreSQL backup started in prepare that no snapshot follows is stopped, on every failure
path: a later writer fails, the budget runs out, the host aborts, the ceiling fires, the daemon
is told to stop. Through the daemon, with a real PostgreSQL and a filesystem this test made;
the server's own log is the judge ("aborting backup due to backend exiting")."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agentproc import AgentProcess
from tests.helpers.dbservers import PgServer
from tests.helpers.freeze import frozen_now
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.pg, pytest.mark.root, pytest.mark.slow]
ABORTED = "aborting backup due to backend exiting before pg_backup_stop was called"


def holders(pg: PgServer) -> list[tuple[Any, ...]]:
    return pg.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'quiesce-agent'")


def script(folder: Path, name: str, on_freeze: str) -> None:
    folder.mkdir(mode=0o755, exist_ok=True)
    path = folder / name
    path.write_text(f'#!/bin/sh\n[ "$1" = freeze ] && {{ {on_freeze}; }}\nexit 0\n')
    path.chmod(0o755)


@pytest.mark.parametrize(
    "path", ["a script fails", "the budget runs out", "mysql fails", "abort", "ceiling", "sigterm"]
)
def test_a_started_backup_not_followed_by_a_snapshot_is_stopped(
    path: str,
    make_fs: Callable[..., Any],
    pg_factory: Callable[..., PgServer],
    short_tmp: Path,
) -> None:
    fs = make_fs("ext4", 200)
    pg = pg_factory().start()
    scripts = short_tmp / "scripts"
    if path == "a script fails":
        script(scripts, "10-app", "echo cannot >&2; exit 2")
    elif path == "the budget runs out":
        script(scripts, "10-app", "sleep 30")
    else:
        script(scripts, "10-app", "true")
    config: dict[str, Any] = {
        "freeze": {"ceiling_seconds": 2, "timeout_seconds": 1.5},
        "scripts": {"dir": str(scripts), "legacy_dir": None},
        "postgres": [{"name": "main", "dsn": pg.dsn}],
        "filesystems": {"mounts": [fs.path]},
    }
    if path == "mysql fails":
        config["mysql"] = [{"name": "gone", "unix_socket": str(short_tmp / "no.sock")}]
    agent = AgentProcess(short_tmp, config).start()
    try:
        reply = agent.call("freeze", {"label": "no-snapshot"})
        if path in ("a script fails", "the budget runs out", "mysql fails"):
            assert "error" in reply, reply
            desc = reply["error"]["desc"]
            assert ("mysql:gone" if path == "mysql fails" else "scripts:10-app") in desc
        else:
            assert reply["return"]["consistency"] == "application", reply
            assert len(holders(pg)) == 1  # backup mode, held since prepare
        if path == "abort":
            assert "return" in agent.call("abort")
        elif path == "ceiling":
            assert wait_until(lambda: agent.call("status")["return"]["state"] == "idle", 10)
            assert agent.call("thaw")["error"]["class"] == "NotConsistent"
        elif path == "sigterm":
            agent.stop(signal.SIGTERM)
        assert wait_until(lambda: holders(pg) == [], 10)
        assert wait_until(lambda: ABORTED in pg.log_text(), 10), pg.log_text()[-2000:]
        assert not frozen_now(fs.path)
    finally:
        agent.stop()
