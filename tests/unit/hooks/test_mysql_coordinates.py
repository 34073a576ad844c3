"""The binary log coordinates each server and lock reports, read through a stand-in session."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hooks.mysql import coordinates


class Session:
    """Answers each statement from a table, as the held session would, and keeps the log."""

    def __init__(self, answers: dict[str, list[tuple[Any, ...]]]) -> None:
        self.answers = answers
        self.ran: list[str] = []

    def __call__(self, step: str, sql: str, bound: float) -> list[tuple[Any, ...]]:
        assert bound == 4.0  # every statement gets the bound the writer passed
        self.ran.append(sql)
        return self.answers[sql]


def test_mariadb_reports_its_position_and_gtid_binlog_pos() -> None:
    session = Session(
        {
            "SHOW MASTER STATUS": [("mariadb-bin.000004", 1234, "", "")],
            "SELECT @@gtid_binlog_pos": [("0-1-42",)],
        }
    )
    assert coordinates.read(session, "backup_stage", "mariadb", (10, 11, 19), 4.0) == {
        "binlog_file": "mariadb-bin.000004",
        "binlog_position": 1234,
        "gtid": "0-1-42",
        "gtid_variable": "@@gtid_binlog_pos",
        "coordinates_exact": True,
    }


def test_mysql_8_2_and_later_use_show_binary_log_status() -> None:
    session = Session(
        {
            "SHOW BINARY LOG STATUS": [("binlog.000002", 157, "", "", "")],
            "SELECT @@gtid_executed": [("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5",)],
        }
    )
    got = coordinates.read(session, "ftwrl", "mysql", (8, 4, 3), 4.0)
    assert session.ran == ["SHOW BINARY LOG STATUS", "SELECT @@gtid_executed"]
    assert (got["binlog_file"], got["binlog_position"]) == ("binlog.000002", 157)
    assert got["gtid_variable"] == "@@gtid_executed" and got["coordinates_exact"] is True
    session = Session(
        {"SHOW MASTER STATUS": [("binlog.000001", 4)], "SELECT @@gtid_executed": [("",)]}
    )
    coordinates.read(session, "ftwrl", "mysql", (8, 0, 36), 4.0)
    assert session.ran[0] == "SHOW MASTER STATUS"


def test_a_server_without_binary_log_or_gtids_reports_none() -> None:
    session = Session({"SHOW MASTER STATUS": []})  # log_bin off: no row
    got = coordinates.read(session, "ftwrl", "mysql", (5, 5, 62), 4.0)
    assert session.ran == ["SHOW MASTER STATUS"]  # 5.5 has no GTIDs: not even asked
    assert got == {
        "binlog_file": None,
        "binlog_position": None,
        "gtid": None,
        "coordinates_exact": True,
    }


@pytest.mark.parametrize("local", [None, "not json", "[1, 2]"])
def test_instance_lock_with_an_unreadable_log_status_reports_no_position(local: Any) -> None:
    session = Session({"SELECT LOCAL FROM performance_schema.log_status": [(local,)]})
    got = coordinates.read(session, "instance_lock", "mysql", (8, 0, 36), 4.0)
    assert got == {
        "binlog_file": None,
        "binlog_position": None,
        "gtid": None,
        "gtid_variable": "@@gtid_executed",
        "coordinates_exact": False,
    }


def test_instance_lock_reads_the_position_from_log_status_as_mysql_documents_it() -> None:
    local = {
        "gtid_executed": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa:1-2",
        "binary_log_file": "binlog.000001",
        "binary_log_position": 8763,
    }
    session = Session({"SELECT LOCAL FROM performance_schema.log_status": [(json.dumps(local),)]})
    got = coordinates.read(session, "instance_lock", "mysql", (8, 0, 36), 4.0)
    assert (got["binlog_file"], got["binlog_position"]) == ("binlog.000001", 8763)
    assert got["gtid"] == local["gtid_executed"] and got["coordinates_exact"] is False
