"""quiesce-agent's command line: --config before or after the verb, a broken configuration
refused by every verb (exit 3, naming the key), and client verbs that load no daemon."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.env import REPO

CLIENT_MUST_NOT_LOAD = (
    "agent.daemon",
    "agent.session",
    "agent.server",
    "agent.guard",
    "agent.writers",
    "agent.verbs_daemon",
    "hooks.scripts",
    "hooks.filesystems",
    "hooks.postgres.writer",
    "hooks.mysql.writer",
    "psycopg",
    "pymysql",
    "psutil",
    "asyncio",
    "logging",
)


def agent_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-B", "-m", "agent", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text("listen:\n  unix: /run/qa.sock\nfreeze:\n  ceiling_secnds: 10\n")
    return path


@pytest.mark.parametrize("verb", ["status", "ping", "freeze", "serve", "check", "recover"])
@pytest.mark.parametrize("before", [True, False])
def test_a_broken_config_is_refused_naming_the_key_before_or_after_the_verb(
    broken: Path, verb: str, before: bool
) -> None:
    argv = ["--config", str(broken), verb] if before else [verb, "--config", str(broken)]
    done = agent_cli(*argv)
    assert done.returncode == 3, done.stderr
    assert "freeze.ceiling_secnds: unknown key" in done.stderr


def test_the_config_after_the_verb_wins_over_the_one_before(broken: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"listen:\n  unix: {tmp_path}/none.sock\n")
    done = agent_cli("--config", str(broken), "ping", "--config", str(good))
    assert done.returncode == 7  # unreachable: the good file was read, its socket tried
    assert f"unix:{tmp_path}/none.sock" in done.stderr


def test_a_config_named_but_missing_is_an_error_not_the_default_socket(tmp_path: Path) -> None:
    done = agent_cli("status", "--config", str(tmp_path / "nope.yaml"))
    assert done.returncode == 3
    assert "cannot read the configuration" in done.stderr


def test_a_client_with_no_unix_socket_configured_says_so(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("listen:\n  unix: null\n  vsock: {port: 5000}\n")
    done = agent_cli("--config", str(path), "status")
    assert done.returncode == 3
    assert "listen.unix is null" in done.stderr and "--socket" in done.stderr


def test_a_missing_scripts_folder_fails_check_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"scripts:\n  dir: {tmp_path}/backupScripts.d\n")
    done = agent_cli("check", "--config", str(path))
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"FAIL  scripts.dir: {tmp_path}/backupScripts.d does not exist" in done.stdout
    (tmp_path / "backupScripts.d").mkdir()  # an empty folder is fine
    done = agent_cli("check", "--config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout


def test_client_verbs_load_neither_the_daemon_nor_a_database_driver(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from agent.__main__ import main\n"
        f"rc = main(['--config', {str(tmp_path / 'a.yaml')!r}, 'status'])\n"
        "print(rc, ' '.join(sorted(sys.modules)))\n"
    )
    (tmp_path / "a.yaml").write_text(
        f"listen:\n  unix: {tmp_path}/none.sock\npostgres:\n  - name: pg\n    dsn: host=/x\n"
    )
    done = subprocess.run(
        [sys.executable, "-B", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    rc, *modules = done.stdout.split()
    assert rc == "7", done.stderr  # unreachable, after reading the whole configuration
    loaded = [m for m in modules if m.startswith(CLIENT_MUST_NOT_LOAD)]
    assert loaded == []


def test_the_daemon_verbs_load_every_writer_before_serving() -> None:
    # the other side of the split: agent.verbs_daemon brings the whole daemon in at once
    code = (
        "import sys, agent.verbs_daemon\n"
        "print(' '.join(m for m in ('agent.daemon', 'agent.session', 'hooks.postgres.writer', "
        "'hooks.mysql.writer', 'hooks.scripts', 'hooks.filesystems', 'psycopg', 'pymysql') "
        "if m not in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-B", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
