"""Which backup lock ``auto`` picks, which it refuses, and statements masked for messages."""

from __future__ import annotations

from hooks.mysql.strategy import choose_lock, mask, parse_version, refuse_lock


def test_version_gating_and_auto_choice() -> None:
    assert parse_version("10.11.19-MariaDB-0+deb12u1-log") == ("mariadb", (10, 11, 19))
    assert parse_version("8.4.3") == ("mysql", (8, 4, 3))
    assert choose_lock("mariadb", (10, 11, 6), {})[0] == "backup_stage"
    assert choose_lock("mariadb", (10, 3, 30), {})[0] == "ftwrl"
    assert choose_lock("mysql", (8, 0, 36), {})[0] == "instance_lock"
    assert choose_lock("mysql", (5, 7, 44), {})[0] == "ftwrl"
    strategy, reason = choose_lock("mysql", (8, 4, 0), {"MyISAM": 2})
    assert strategy == "ftwrl" and "2 MyISAM" in reason
    assert refuse_lock("instance_lock", "mysql", (8, 0, 11)) is None
    assert "MySQL 8.0" in (refuse_lock("instance_lock", "mysql", (5, 7, 44)) or "")
    assert "backup_stage" in (refuse_lock("instance_lock", "mariadb", (10, 11, 6)) or "")
    assert "MariaDB 10.4" in (refuse_lock("backup_stage", "mysql", (8, 0, 36)) or "")
    assert refuse_lock("ftwrl", "mysql", (5, 6, 0)) is None
    # statements named in errors and logs never show their string literals
    assert (
        mask("ALTER USER 'app'@'%' IDENTIFIED BY 'hunter2'")
        == "ALTER USER '?'@'?' IDENTIFIED BY '?'"
    )
