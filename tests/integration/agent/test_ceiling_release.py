"""The ceiling releases by itself, through the daemon, with a real MariaDB and a filesystem this
test made: the filesystem and the database lock go first, a slow thaw script last, and the
daemon keeps answering ``ping`` and ``status`` all the while."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agentproc import AgentProcess
from tests.helpers.dbservers import MariaServer
from tests.helpers.freeze import frozen_now
from tests.helpers.hostcli import write_script
from tests.helpers.waiting import Background, wait_until

pytestmark = [pytest.mark.mysql, pytest.mark.root, pytest.mark.slow]


def timed(agent: AgentProcess, execute: str) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    reply = agent.call(execute, timeout=10)
    return (time.monotonic() - t0) * 1000, reply


def test_the_ceiling_release_keeps_the_daemon_answering_and_frees_locks_first(
    make_fs: Callable[..., Any],
    maria_factory: Callable[..., MariaServer],
    short_tmp: Path,
) -> None:
    fs = make_fs("ext4", 200)
    my = maria_factory().start()
    my.sql("CREATE DATABASE d")
    my.sql("CREATE TABLE d.t (i INT PRIMARY KEY) ENGINE=InnoDB")
    scripts = short_tmp / "scripts"
    done = short_tmp / "thaw-done"
    write_script(scripts, "10-app", f'[ "$1" = thaw ] && {{ sleep 20; touch {done}; }}\n')
    agent = AgentProcess(
        short_tmp,
        {
            "freeze": {"ceiling_seconds": 2, "timeout_seconds": 1},
            "scripts": {"dir": str(scripts), "legacy_dir": None, "timeout_seconds": 30},
            "mysql": [{"name": "main", "unix_socket": my.socket, "user": my.user}],
            "filesystems": {"mounts": [fs.path]},
        },
    ).start()
    try:
        assert "return" in agent.call("freeze", {"label": "forgotten"})
        blocked = Background(my, "INSERT INTO d.t VALUES (1)")  # waits for the commit block
        assert wait_until(lambda: agent.call("status")["return"]["state"] == "releasing", 10)
        ping_ms, ping = timed(agent, "ping")
        status_ms, status = timed(agent, "status")
        assert "return" in ping and status["return"]["state"] == "releasing"
        assert not done.exists()  # the thaw script is still asleep...
        assert not frozen_now(fs.path)  # ...and the filesystem is already thawed
        assert blocked.join(5) < 5 and blocked.error is None  # the commit block is gone
        states = {w["name"]: w["state"] for w in status["return"]["last_report"]["writers"]}
        assert states["filesystems:listed"] == "released"
        assert states["mysql:main"] == "released"
        print(f"during the ceiling's release: ping {ping_ms:.1f} ms, status {status_ms:.1f} ms")
        reply = agent.call("thaw")
        assert reply["error"]["class"] == "NotConsistent"
        assert wait_until(lambda: agent.call("status")["return"]["state"] == "idle", 30)
        assert done.exists() and agent.proc is not None and agent.proc.poll() is None
    finally:
        agent.stop()
