"""The Debian package's man page names every verb and exit code the CLI has."""

from __future__ import annotations

import re

from agent.__main__ import EXIT_CODES, LOCAL_VERBS
from agent.verbs_client import VERBS
from tests.helpers.env import REPO

PAGE = (REPO / "packaging" / "deb" / "quiesce-agent.8").read_text()


def test_every_verb_is_in_the_man_page() -> None:
    described = set(re.findall(r"^\.B(?:R)? (\w+)", PAGE.split(".SH COMMANDS")[1], re.M))
    assert set(LOCAL_VERBS) | set(VERBS) <= described


def test_every_exit_code_is_in_the_man_page() -> None:
    status = PAGE.split(".SH EXIT STATUS")[1].split(".SH")[0]
    assert {int(n) for n in re.findall(r"\b(\d+) ", status)} == set(EXIT_CODES)
