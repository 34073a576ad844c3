"""Tests in a real QEMU guest (the ``vm`` marker): the guest image, built once per run.

Every test under tests/vm/ is marked ``vm`` (and ``slow``). The image comes from the project's
own build (host/lab/image.py), cached in ``$QUIESCE_GUEST_IMAGES`` or ``.cache/guest-images``:
minutes on a machine without the cache, seconds after. Missing qemu-system-x86_64 or
mmdebstrap, or an image that fails to build, skips with the reason locally and fails in CI
(``QUIESCE_REQUIRE_SERVERS=1``), as every other real part does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from host.lab.databases import LabError
from host.lab.image import GuestImage, build_image, default_cache
from tests.helpers.env import need, need_root

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.vm)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The cached guest image for the current inputs, built here if it is not cached yet."""
    need_root()
    need(
        shutil.which("qemu-system-x86_64") is not None, "needs qemu-system-x86_64 (qemu-system-x86)"
    )
    need(shutil.which("mmdebstrap") is not None, "needs mmdebstrap to build the guest image")
    try:
        return build_image(default_cache(), log=print)
    except LabError as err:
        need(False, f"the guest image did not build: {err}")
        raise  # unreachable: need() skipped or failed
