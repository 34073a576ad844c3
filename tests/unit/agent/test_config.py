"""The configuration: documented defaults, and every bad key named in one error."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from agent import config
from common.errors import ConfigError
from hooks.mysql.settings import MysqlSettings
from hooks.postgres.settings import PostgresSettings
from tests.helpers.env import REPO


def test_an_empty_file_gives_the_documented_defaults() -> None:
    cfg = config.parse(None)
    assert cfg.freeze.ceiling_seconds == 60
    assert cfg.freeze.timeout_seconds == 30
    assert cfg.listen.unix == "/run/quiesce-agent/agent.sock"
    assert cfg.scripts is None and cfg.filesystems is None  # absent section = writer off
    assert cfg.postgres == () and cfg.mysql == ()


def test_a_database_entry_gets_the_writers_own_defaults() -> None:
    cfg = config.parse(
        {"postgres": [{"name": "main", "dsn": "host=/tmp"}], "mysql": [{"name": "main"}]}
    )
    assert cfg.postgres == (PostgresSettings(name="main", dsn="host=/tmp"),)
    assert cfg.mysql == (MysqlSettings(name="main"),)


@pytest.mark.parametrize(
    ("settings", "keys", "entry"),
    [
        (PostgresSettings, config.POSTGRES_KEYS, {"name": "main", "dsn": "host=/tmp"}),
        (MysqlSettings, config.MYSQL_KEYS, {"name": "main"}),
    ],
)
def test_every_setting_is_a_key_and_its_default_is_accepted(
    settings: type, keys: dict[str, object], entry: dict[str, object]
) -> None:
    fields = dataclasses.fields(settings)
    assert list(keys) == [f.name for f in fields]  # the order "unknown key; known: ..." lists
    # every default written out in the YAML gives the same settings as leaving it out
    spelled = dict(entry)
    for f in fields:
        if f.default is not dataclasses.MISSING and f.default is not None:
            spelled[f.name] = f.default
    section = "postgres" if settings is PostgresSettings else "mysql"
    assert config.parse({section: [spelled]}) == config.parse({section: [entry]})


def test_loading_the_config_loads_no_database_driver() -> None:
    # the client CLI loads the configuration to find the socket: that must not cost psycopg
    # or pymysql (nor any writer)
    code = (
        "import sys, agent.config\n"
        "agent.config.parse({'postgres': [{'name': 'a', 'dsn': 'x'}], 'mysql': [{'name': 'b'}]})\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('psycopg', 'pymysql') or m.endswith('.writer'))))"
    )
    done = subprocess.run(
        [sys.executable, "-B", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


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


def test_a_group_that_does_not_exist_is_a_config_error_naming_the_key() -> None:
    # accepted before, and the daemon then died at start with "unexpected error" (exit 2)
    with pytest.raises(ConfigError, match="listen.group: no group 'no-such-group-qa'") as err:
        config.parse({"listen": {"unix": "/run/x.sock", "group": "no-such-group-qa"}})
    assert err.value.exit_code == 3
    assert config.parse({"listen": {"unix": "/run/x.sock", "group": "root"}}).listen.group == "root"


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("mysql", "port", 70000, "mysql[0].port: must be 1..65535"),
        ("mysql", "long_query_wait", -1, "mysql[0].long_query_wait: must be >= 0"),
        ("postgres", "connect_timeout", 0, "postgres[0].connect_timeout: must be greater than 0"),
    ],
)
def test_every_bound_of_the_schema_is_enforced(
    section: str, key: str, value: object, message: str
) -> None:
    entry: dict[str, object] = {"name": "a", "dsn": "x"} if section == "postgres" else {"name": "a"}
    with pytest.raises(ConfigError) as err:
        config.parse({section: [{**entry, key: value}]})
    assert message in str(err.value)


def test_a_relative_scripts_dir_is_refused() -> None:
    with pytest.raises(ConfigError, match="scripts.dir: must be an absolute path"):
        config.parse({"scripts": {"dir": "backupScripts.d"}})


def test_concurrent_scripts_are_file_names_in_the_scripts_folder() -> None:
    cfg = config.parse({"scripts": {"concurrent": ["20-cache", "30-queue"]}})
    assert cfg.scripts is not None and cfg.scripts.concurrent == ("20-cache", "30-queue")
    with pytest.raises(ConfigError) as err:
        config.parse({"scripts": {"concurrent": ["/etc/x", 5]}})
    assert "scripts.concurrent[0]: must be a script's file name" in str(err.value)
    assert "scripts.concurrent[1]" in str(err.value)
    with pytest.raises(ConfigError, match="scripts.concurrent: must be a list"):
        config.parse({"scripts": {"concurrent": "20-cache"}})
