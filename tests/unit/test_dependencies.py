"""Guest and host dependencies apart (a guest install pulls no FUSE binding, a host-only
install no database driver), and the unit's Documentation= exists after the README's install."""

from __future__ import annotations

import re
import tomllib

from tests.helpers.env import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DRIVERS = ("psycopg", "pymysql")
FUSE = ("mfusepy", "fusepy", "pyfuse3", "llfuse")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[;! ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_common_dependencies_hold_neither_drivers_nor_fuse() -> None:
    common = _names(PROJECT["project"]["dependencies"])
    assert common.isdisjoint(DRIVERS + FUSE), common


def test_a_guest_install_pulls_no_fuse_binding_and_a_host_install_no_driver() -> None:
    extras = PROJECT["project"]["optional-dependencies"]
    assert _names(extras["guest"]) >= set(DRIVERS)
    assert _names(extras["guest"]).isdisjoint(FUSE)
    assert _names(extras["host"]).isdisjoint(DRIVERS)
    assert _names(extras["host"]) & set(FUSE)


def test_the_floors_are_what_debian_12_ships() -> None:
    # the .deb depends on Debian's own packages: the code must work with those versions
    floors = " ".join(PROJECT["project"]["optional-dependencies"]["guest"])
    assert "psycopg[binary]>=3.1.7" in floors and "pymysql>=1.0.2" in floors


def test_the_units_documentation_exists_after_the_readme_install() -> None:
    unit = (REPO / "systemd" / "quiesce-agent.service").read_text()
    docs = re.findall(r"file:///opt/quiesce-agent/(\S+)", unit.split("Documentation=")[1])
    assert docs, "Documentation= names no file of the install"
    shipped = {
        f"{folder}/{src.rsplit('/', 1)[-1]}"
        for folder, files in PROJECT["tool"]["setuptools"]["data-files"].items()
        for src in files
    }
    assert set(docs) <= shipped, f"{set(docs) - shipped} is not installed by pip install"
    assert "/opt/quiesce-agent" in (REPO / "README.md").read_text()
