"""One error tree, one table of exit codes for both command lines."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from common.errors import MEANINGS, QuiesceError, error_classes
from tests.helpers.env import REPO

PACKAGES = ("agent", "common", "hooks", "host")


def _all_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        for info in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return names


@pytest.fixture(scope="module")
def modules() -> list[object]:
    return [importlib.import_module(name) for name in _all_modules()]


def test_every_error_we_raise_on_purpose_derives_from_the_one_root(modules: list[object]) -> None:
    strays = []
    for module in modules:
        for name, cls in inspect.getmembers(module, inspect.isclass):
            ours = cls.__module__ == module.__name__  # type: ignore[attr-defined]
            if ours and issubclass(cls, BaseException) and not issubclass(cls, QuiesceError):
                if not name.startswith("_"):  # private control flow (a hang-up) is not an error
                    strays.append(f"{cls.__module__}.{name}")
    assert strays == []


def test_every_exit_code_has_one_documented_meaning(modules: list[object]) -> None:
    undocumented = {
        f"{c.__module__}.{c.__name__}": c.exit_code
        for c in error_classes()
        if c.exit_code not in MEANINGS
    }
    assert undocumented == {}


def test_the_two_command_lines_list_only_documented_codes() -> None:
    from agent.__main__ import EXIT_CODES as AGENT
    from host.cli.main import EXIT_CODES as HOST

    assert set(AGENT) <= set(MEANINGS) and set(HOST) <= set(MEANINGS)


def test_the_readme_gives_every_exit_code_its_meaning() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    missing = [code for code in MEANINGS if f"| {code} |" not in section]
    assert missing == []
