"""The configuration: documented defaults, and every bad key named in one error."""

from __future__ import annotations

import pytest

from agent import config
from common.errors import ConfigError
from tests.helpers.env import REPO


def test_an_empty_file_gives_the_documented_defaults() -> None:
    cfg = config.parse(None)
    assert cfg.freeze.ceiling_seconds == 60
    assert cfg.freeze.timeout_seconds == 30
    assert cfg.listen.unix == "/run/quiesce-agent/agent.sock"
    assert cfg.scripts is None and cfg.filesystems is None  # absent section = writer off
    assert cfg.postgres == () and cfg.mysql == ()


def test_the_design_example_loads() -> None:
    cfg = config.parse(
        {
            "listen": {"unix": "/run/quiesce-agent/agent.sock"},
            "freeze": {"ceiling_seconds": 60, "timeout_seconds": 30},
            "scripts": {"dir": "/etc/quiesce-agent/backupScripts.d", "timeout_seconds": 30},
            "filesystems": {"mounts": "auto", "exclude": []},
            "postgres": [{"name": "main", "dsn": "host=/var/run/postgresql user=postgres"}],
            "mysql": [
                {
                    "name": "main",
                    "unix_socket": "/run/mysqld/mysqld.sock",
                    "user": "root",
                    "password_file": "/etc/quiesce-agent/mysql.password",
                    "lock": "auto",
                }
            ],
        }
    )
    assert cfg.filesystems is not None and cfg.filesystems.mounts is None  # auto
    assert cfg.mysql[0].lock == "auto"
    assert cfg.postgres[0].name == "main"


def test_every_problem_is_reported_at_once_with_its_key() -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(
            {
                "freeze": {"ceiling_seconds": 90, "timout_seconds": 5},
                "filesystems": {"mounts": "everything"},
                "mysql": [{"name": "a", "lock": "global"}],
                "postgres": [{"dsn": "host=/tmp"}],
                "bogus": 1,
            }
        )
    text = str(err.value)
    for key in (
        "freeze.ceiling_seconds: must be 1..60",
        "freeze.timout_seconds: unknown key",
        "filesystems.mounts",
        "mysql[0].lock: must be one of",
        "postgres[0].name: is required",
        "bogus: unknown key",
    ):
        assert key in text


@pytest.mark.parametrize("value", [0, 60.5, 61, -1])
def test_the_ceiling_can_never_exceed_60_seconds(value: float) -> None:
    with pytest.raises(ConfigError, match="freeze.ceiling_seconds"):
        config.parse({"freeze": {"ceiling_seconds": value}})


def test_a_budget_longer_than_the_ceiling_is_refused() -> None:
    with pytest.raises(ConfigError, match="freeze.timeout_seconds: must not exceed"):
        config.parse({"freeze": {"ceiling_seconds": 10, "timeout_seconds": 20}})


def test_a_boolean_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match="scripts.timeout_seconds"):
        config.parse({"scripts": {"timeout_seconds": True}})


def test_duplicate_server_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"postgres\[1\].name: duplicate"):
        config.parse({"postgres": [{"name": "a", "dsn": "x"}, {"name": "a", "dsn": "y"}]})


def test_a_broken_file_names_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "agent.yaml"
    bad.write_text("freeze: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")


def test_the_shipped_example_config_is_valid() -> None:

    example = REPO / "docs" / "agent.yaml.example"
    cfg = config.load(example)
    assert cfg.filesystems is not None and cfg.scripts is not None
