"""The command line as a sysadmin uses it, and the systemd unit as systemd sees it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from host.lab.local import console_script
from tests.helpers.agentproc import AgentProcess
from tests.helpers.env import REPO

pytestmark = pytest.mark.root


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("quiesce-agent"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_freeze_thaw_status_from_the_command_line(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    sock = ["--socket", agent.socket]
    out = cli("freeze", *sock, "--label", "cli-test")
    assert out.returncode == 0, out.stderr
    assert "cli-test: frozen" in out.stdout and "filesystems:listed" in out.stdout
    status = cli("status", *sock, "--json")
    assert json.loads(status.stdout)["return"]["state"] == "frozen"
    again = cli("freeze", *sock)
    assert again.returncode == 5 and "already frozen" in again.stderr
    thawed = cli("thaw", *sock)
    assert thawed.returncode == 0 and "thawed" in thawed.stdout
    assert cli("thaw", *sock).returncode == 5
    writers = cli("writers", *sock)
    assert "filesystems:listed" in writers.stdout


def test_an_unreachable_agent_has_its_own_exit_code(short_tmp) -> None:
    out = cli("status", "--socket", str(short_tmp / "nobody.sock"))
    assert out.returncode == 7
    assert "cannot connect to the agent" in out.stderr


def test_check_validates_config_and_writers_without_freezing(ext4, short_tmp) -> None:
    cfg = short_tmp / "agent.yaml"
    (short_tmp / "scripts").mkdir()  # empty is fine; a missing one fails check (test_cli.py)
    cfg.write_text(f"filesystems:\n  mounts: [{ext4.path}]\nscripts:\n  dir: {short_tmp}/scripts\n")
    out = cli("--config", str(cfg), "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"would freeze {ext4.path}" in out.stdout
    cfg.write_text("freeze:\n  ceiling_seconds: 120\nfilesystem: {}\n")
    bad = cli("--config", str(cfg), "check")
    assert bad.returncode == 3
    assert "freeze.ceiling_seconds" in bad.stderr and "filesystem: unknown key" in bad.stderr


def test_help_explains_the_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for word in ("serve", "freeze", "thaw", "abort", "status", "writers", "check", "60"):
        assert word in out.stdout


def test_the_daemon_tells_systemd_it_is_ready_and_alive(short_tmp) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(short_tmp / "notify"))
    notify.settimeout(10)
    os.environ["NOTIFY_SOCKET"] = str(short_tmp / "notify")
    os.environ["WATCHDOG_USEC"] = "400000"
    try:
        agent = AgentProcess(short_tmp, {}).start()
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
    try:
        seen = {notify.recv(100).decode() for _ in range(3)}
        assert "READY=1" in seen and "WATCHDOG=1" in seen
    finally:
        agent.stop()
    notify.settimeout(0.5)
    rest = []
    try:
        while True:
            rest.append(notify.recv(100).decode())
    except TimeoutError:
        pass
    assert "STOPPING=1" in rest


def test_the_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO / "systemd" / "quiesce-agent.service").read_text()
    exe = shutil.which("quiesce-agent") or str(Path(sys.executable).parent / "quiesce-agent")
    local = tmp_path / "quiesce-agent.service"
    local.write_text(unit.replace("/opt/quiesce-agent/bin/quiesce-agent", exe))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for needed in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecStopPost=",
        "RuntimeDirectoryPreserve=yes",
    ):
        assert needed in unit
