"""The command lines' tables."""

from __future__ import annotations

from common.tables import table


def test_columns_line_up_under_their_widest_cell() -> None:
    lines = table(["WRITER", "STATE"], [["postgres:main", "thawed"], ["mysql:a", "failed"]])
    assert lines == ["WRITER         STATE", "postgres:main  thawed", "mysql:a        failed"]


def test_no_trailing_blanks_and_numbers_become_text() -> None:
    assert table(["A", "B"], [[1, ""]]) == ["A  B", "1"]
