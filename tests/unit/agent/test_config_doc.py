"""docs/config.md is the schema the validator uses, rendered: it cannot drift from the code."""

from __future__ import annotations

import dataclasses

from agent import config, configdoc, schema
from hooks.mysql.settings import LOCKS
from tests.helpers.env import REPO


def test_docs_config_md_is_what_the_schema_renders() -> None:
    shipped = (REPO / "docs" / "config.md").read_text()
    assert shipped == configdoc.render(), "docs/config.md is stale: run scripts/config-doc"


def test_every_key_of_the_schema_is_a_field_of_the_class_it_is_validated_into() -> None:
    for section in schema.SECTIONS:
        owner = config.DEFAULTS[section.name]
        fields = {f.name for f in dataclasses.fields(owner)}  # type: ignore[arg-type]
        missing = {k.name for k in section.keys} - fields - {"vsock"}  # vsock -> vsock_port
        assert not missing, f"{section.name}: {missing} have no field (and so no default)"


def test_every_field_of_the_settings_is_a_documented_key() -> None:
    for section in (schema.POSTGRES, schema.MYSQL):
        owner = config.DEFAULTS[section.name]
        assert [f.name for f in dataclasses.fields(owner)] == [k.name for k in section.keys]  # type: ignore[arg-type]


def test_the_lock_choices_are_the_writers_own() -> None:
    assert schema.MYSQL.key("lock").choices == LOCKS


def test_the_reference_shows_each_default_the_validator_gives() -> None:
    text = configdoc.render()
    assert "| `freeze.ceiling_seconds` | number | `60` | `1..60` |" in text
    assert "| `postgres[].dsn` | string | **required** |" in text
    assert "| `mysql[].port` | integer | `3306` | `1..65535` |" in text
