"""The bridge makes one CLI call per hook invocation (a CLI start is seconds in a slow
guest), with the flags that keep the filesystems to the tool and, under qemu-ga, the record
for quiesce-host."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.env import REPO

BRIDGE = REPO / "backupScripts.d" / "50-quiesce-agent-bridge"
FAKE_CLI = '#!/bin/sh\necho "$*" >> {log}\nexit {rc}\n'


def run_bridge(tmp_path: Path, folder: str, arg: str, rc: int = 0) -> tuple[int, list[str]]:
    log = tmp_path / "calls.log"
    cli = tmp_path / "quiesce-agent"
    cli.write_text(FAKE_CLI.format(log=log, rc=rc))
    cli.chmod(0o755)
    d = tmp_path / folder
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(BRIDGE, d / BRIDGE.name)
    env = {"PATH": "/usr/bin:/bin", "QUIESCE_AGENT": str(cli)}
    if os.path.exists("/etc/default/quiesce-agent"):
        pytest.skip("/etc/default/quiesce-agent would change the bridge's settings")
    proc = subprocess.run(
        [str(d / BRIDGE.name), arg], env=env, capture_output=True, text=True, timeout=30
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, calls


@pytest.mark.parametrize("arg", ["freeze", "thaw", "freezeFail"])
def test_one_cli_call_per_hook_invocation(tmp_path: Path, arg: str) -> None:
    rc, calls = run_bridge(tmp_path, "qemu/fsfreeze-hook.d", arg)
    assert rc == 0 and len(calls) == 1, calls
    verb = {"freeze": "freeze", "thaw": "thaw", "freezeFail": "abort"}[arg]
    assert f" {verb} " in f" {calls[0]} "
    assert "--record /run/quiesce-agent/qemu-ga-bridge.json" in calls[0]
    if arg == "freeze":
        assert "--skip filesystems" in calls[0]


def test_under_vmware_no_record_and_a_failure_is_the_exit_status(tmp_path: Path) -> None:
    rc, calls = run_bridge(tmp_path, "vmware-tools/backupScripts.d", "freeze", rc=7)
    assert rc == 7 and len(calls) == 1 and "--record" not in calls[0]
    rc, calls = run_bridge(tmp_path, "vmware-tools/backupScripts.d", "thaw", rc=6)
    assert rc == 6  # the ceiling thawed first: the tool must fail the snapshot
