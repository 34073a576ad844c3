"""quiesce-host's global flags work before and after the verb, at every depth."""

from __future__ import annotations

import pytest

from host.cli.main import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "disk", "info", "/d"],
        ["disk", "-v", "info", "/d"],
        ["disk", "info", "/d", "-v"],
        ["disk", "info", "--verbose", "/d"],
        ["snapshot", "list", "/d", "-v"],
    ],
)
def test_verbose_is_taken_wherever_it_is_given(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).verbose is True


def test_verbose_given_before_the_verb_is_not_undone_by_the_verb() -> None:
    args = build_parser().parse_args(["-v", "snapshot", "list", "/d"])
    assert args.verbose is True
    assert build_parser().parse_args(["snapshot", "list", "/d"]).verbose is False
