"""An image build that fails names the step and shows the tail of its build log, and leaves
nothing behind: no build folder, nothing mounted, no process; the log kept beside the cache's
entries. A package that does not exist; a cache on a filesystem without the space a build
needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from host.lab import guest_recipe
from host.lab.databases import LabError
from host.lab.image import build_image
from tests.helpers.env import need, need_root
from tests.vm.lab.helpers import mounts_under, processes_of


@pytest.fixture(autouse=True)
def _builder() -> None:
    need_root()
    need(shutil.which("mmdebstrap") is not None, "needs mmdebstrap to build the guest image")


def assert_nothing_left(cache: Path) -> None:
    assert list(cache.glob(".build-*")) == []
    assert list(cache.glob("debian12-*")) == []
    assert mounts_under(cache) == []
    assert processes_of(cache) == []


def test_a_missing_package_fails_the_bootstrap_step_with_the_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    wanted = (*guest_recipe.PACKAGES, "quiesce-no-such-package")
    monkeypatch.setattr(guest_recipe, "PACKAGES", wanted)
    with pytest.raises(LabError) as caught:
        build_image(cache, log=print)
    message = str(caught.value)
    assert message.startswith("guest image: step 'bootstrap' failed: mmdebstrap exited with")
    assert "quiesce-no-such-package" in message  # apt's own words, from the log's tail
    assert f"(the whole log: {cache / 'failed-build.log'})" in message
    assert "quiesce-no-such-package" in (cache / "failed-build.log").read_text()
    assert_nothing_left(cache)


def test_a_cache_without_space_fails_before_the_build(tmp_path: Path) -> None:
    cache = tmp_path / "small"
    cache.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "quiesce-test", str(cache)],
        check=True,
        timeout=30,
    )
    try:
        with pytest.raises(LabError) as caught:
            build_image(cache, log=print)
        message = str(caught.value)
        assert message.startswith(f"guest image: step 'space': {cache} has 0.2 GiB free")
        assert "set QUIESCE_GUEST_IMAGES" in message
        assert list(cache.glob(".build-*")) == [] and list(cache.glob("debian12-*")) == []
    finally:
        subprocess.run(["umount", str(cache)], check=True, timeout=60)
