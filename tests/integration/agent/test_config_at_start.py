"""What the daemon says at start about a configuration that names what is not there."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.agentproc import AgentProcess


def test_a_missing_scripts_folder_is_one_warning_at_start_and_the_daemon_serves(
    short_tmp: Path,
) -> None:
    missing = short_tmp / "backupScripts.d"
    agent = AgentProcess(short_tmp, {"scripts": {"dir": str(missing)}}).start()
    try:
        assert agent.call("freeze", {"label": "t"})["return"]["outcome"] == "frozen"
        assert "return" in agent.call("thaw")
    finally:
        agent.stop()
    warnings = [line for line in agent.log().splitlines() if "scripts.dir" in line]
    assert len(warnings) == 1, agent.log()
    assert f"{missing} does not exist" in warnings[0] and "WARNING" in warnings[0]
