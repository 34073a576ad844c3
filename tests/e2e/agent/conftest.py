"""The agent's end-to-end tests drive a real daemon on loop-mounted filesystems: root only."""

from __future__ import annotations

import pytest

from tests.helpers.env import need_root


@pytest.fixture(autouse=True)
def _root_only() -> None:
    need_root()
