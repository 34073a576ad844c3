"""The suite's environment: the freeze safety net, the repository root, skip-or-fail.

Importing this module confines FIFREEZE to one directory the suite made itself
(QUIESCE_FREEZE_ONLY_UNDER, enforced by the kernel-call module in this process and in every
daemon or guard it starts): no test can freeze this machine's root filesystem, not even by
reaching ``filesystems.mounts: auto``, which is refused outright while the variable is set.
``tests/conftest.py`` imports it before anything else.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

FREEZE_ROOT = tempfile.mkdtemp(prefix="quiesce-test-mnt-")
os.environ["QUIESCE_FREEZE_ONLY_UNDER"] = FREEZE_ROOT
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

REPO = Path(__file__).resolve().parents[2]
REQUIRE = os.environ.get("QUIESCE_REQUIRE_SERVERS") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip with ``reason`` unless the CI demands everything (QUIESCE_REQUIRE_SERVERS=1)."""
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"required for CI: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root for loop devices and FIFREEZE")
