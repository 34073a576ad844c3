"""What a wheel ships: every package of the source tree (an editable install hides a miss)."""

from __future__ import annotations

import tomllib

from setuptools import find_packages

from tests.helpers.env import REPO


def test_every_package_in_the_tree_is_in_the_distribution() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = set(find_packages(str(REPO), include=include))
    in_tree = {
        str(p.parent.relative_to(REPO)).replace("/", ".")
        for top in ("agent", "common", "hooks", "host")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert in_tree - shipped == set()
