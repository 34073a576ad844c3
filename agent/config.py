"""The agent's configuration: YAML, validated once at load, every error named by its key.

A section that is absent turns its writer off. Defaults are the documented defaults, written
once, in the dataclasses: the agent's own below, the database writers' in their settings
modules (hooks/postgres/settings.py, hooks/mysql/settings.py, which import no driver, so
loading the configuration never loads psycopg or pymysql). Unknown keys and bad values are
errors, all reported together.
"""

from __future__ import annotations

import dataclasses
import grp
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent import schema
from common.errors import ConfigError
from hooks.mysql.settings import MysqlSettings
from hooks.postgres.settings import PostgresSettings

DEFAULT_PATH = "/etc/quiesce-agent/agent.yaml"
PG_THAW_SECONDS = 27.0  # a writer's thaw gets 30 s; pg_backup_stop + the archive wait fit in


@dataclass(frozen=True)
class ListenConfig:
    unix: str | None = "/run/quiesce-agent/agent.sock"
    vsock_port: int | None = None
    virtio_serial: str | None = None
    group: str | None = None  # members of this group may connect besides root


@dataclass(frozen=True)
class FreezeConfig:
    ceiling_seconds: float = 60.0
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class ScriptsConfig:
    dir: str = "/etc/quiesce-agent/backupScripts.d"
    timeout_seconds: float = 30.0
    legacy_dir: str | None = "/usr/sbin"  # pre-freeze-script / post-thaw-script live here
    require_root_owner: bool = True
    concurrent: tuple[str, ...] = ()  # scripts whose freeze runs in prepare (blocks no client)


@dataclass(frozen=True)
class FilesystemsConfig:
    mounts: tuple[str, ...] | None = None  # None = auto
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    listen: ListenConfig = field(default_factory=ListenConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    scripts: ScriptsConfig | None = None
    filesystems: FilesystemsConfig | None = None
    postgres: tuple[PostgresSettings, ...] = ()
    mysql: tuple[MysqlSettings, ...] = ()
    state_dir: str = "/run/quiesce-agent"
    source: str = "<defaults>"


class _Errors:
    """Collects every problem with its dotted path."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def _section(raw: Any, path: str, errors: _Errors) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.add(path, "must be a mapping")
        return {}
    return raw


def _take(
    raw: dict[str, Any],
    path: str,
    errors: _Errors,
    section: schema.Section,
    required: Collection[str] = (),
) -> dict[str, Any]:
    """Pick the keys of ``section`` from ``raw``, checked against the schema's types and
    bounds; unknown keys and missing ``required`` keys are errors. A key whose value is
    wrong is left out of the result (so no later rule reads it)."""
    out: dict[str, Any] = {}
    for key in raw:
        if key not in section.types():
            errors.add(f"{path}.{key}", f"unknown key; known: {', '.join(section.types())}")
    for spec in section.keys:
        if spec.name not in raw:
            if spec.name in required:
                errors.add(f"{path}.{spec.name}", "is required")
            continue
        problem = _problem(spec, raw[spec.name])
        if problem:
            errors.add(f"{path}.{spec.name}", problem)
        else:
            out[spec.name] = raw[spec.name]
    return out


def _problem(spec: schema.Key, value: Any) -> str | None:
    """What is wrong with ``value`` for ``spec`` (type, then bounds), or None."""
    if isinstance(value, bool) and bool not in spec.types:
        return f"must be {_type_names(spec.types)}, not a boolean"
    if not isinstance(value, spec.types):
        return f"must be {_type_names(spec.types)}, got {value!r}"
    if spec.choices and value not in spec.choices:
        return f"must be one of {', '.join(spec.choices)}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    low, high = spec.minimum, spec.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        return f"must be {spec.bounds()}, got {value}"
    if spec.positive and value <= 0:
        return f"must be greater than 0, got {value}"
    return None


def _required(settings: type) -> frozenset[str]:
    """The fields of a settings dataclass that have no default: the keys an entry must give."""
    return frozenset(
        f.name
        for f in dataclasses.fields(settings)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def _type_names(types: tuple[type, ...]) -> str:
    names = {
        int: "a number",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _listen(raw: Any, errors: _Errors) -> ListenConfig:
    sec = _section(raw, "listen", errors)
    vals = _take(sec, "listen", errors, schema.LISTEN)
    vsock_port = None
    if "vsock" in vals:
        v = _take(vals.pop("vsock"), "listen.vsock", errors, schema.VSOCK, ("port",))
        vsock_port = v.get("port")
    if "unix" in sec and "unix" not in vals and sec["unix"] is None:
        vals["unix"] = None
    if sec and not any(k in sec for k in ("unix", "vsock", "virtio_serial")):
        errors.add("listen", "needs at least one of unix, vsock, virtio_serial")
    if vals.get("unix") is not None and not os.path.isabs(vals["unix"]):
        errors.add("listen.unix", f"must be an absolute path, got {vals['unix']!r}")
    if "group" in vals and not _group_exists(vals["group"]):
        errors.add(
            "listen.group",
            f"no group {vals['group']!r} on this machine (getent group {vals['group']} finds "
            "none); create it (groupadd) or remove the key",
        )
    return ListenConfig(vsock_port=vsock_port, **vals)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _freeze(raw: Any, errors: _Errors) -> FreezeConfig:
    sec = _section(raw, "freeze", errors)
    vals = _take(sec, "freeze", errors, schema.FREEZE)
    timeout = vals.get("timeout_seconds", FreezeConfig.timeout_seconds)
    if timeout > vals.get("ceiling_seconds", FreezeConfig.ceiling_seconds):
        errors.add(
            "freeze.timeout_seconds", f"must not exceed freeze.ceiling_seconds, got {timeout}"
        )
    return FreezeConfig(**{k: float(v) for k, v in vals.items()})


def _scripts(raw: Any, errors: _Errors) -> ScriptsConfig:
    sec = _section(raw, "scripts", errors)
    vals = _take(sec, "scripts", errors, schema.SCRIPTS)
    if "legacy_dir" in sec and sec["legacy_dir"] is None:
        vals["legacy_dir"] = None
    for key in ("dir", "legacy_dir"):
        if vals.get(key) is not None and not os.path.isabs(vals[key]):
            errors.add(f"scripts.{key}", f"must be an absolute path, got {vals[key]!r}")
    if "concurrent" in vals:
        vals["concurrent"] = tuple(_file_names(vals["concurrent"], "scripts.concurrent", errors))
    return ScriptsConfig(**vals)


def _file_names(items: list[Any], path: str, errors: _Errors) -> list[str]:
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item or "/" in item or item in (".", ".."):
            errors.add(f"{path}[{i}]", f"must be a script's file name in scripts.dir, got {item!r}")
        else:
            out.append(item)
    return out


def _filesystems(raw: Any, errors: _Errors) -> FilesystemsConfig:
    sec = _section(raw, "filesystems", errors)
    vals = _take(sec, "filesystems", errors, schema.FILESYSTEMS)
    mounts = vals.get("mounts", "auto")
    resolved: tuple[str, ...] | None = None
    if isinstance(mounts, str):
        if mounts != "auto":
            errors.add(
                "filesystems.mounts", f"must be 'auto' or a list of mount points, got {mounts!r}"
            )
    else:
        resolved = tuple(_abs_paths(mounts, "filesystems.mounts", errors))
    exclude = tuple(_abs_paths(vals.get("exclude", []), "filesystems.exclude", errors))
    return FilesystemsConfig(mounts=resolved, exclude=exclude)


def _abs_paths(items: list[Any], path: str, errors: _Errors) -> list[str]:
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not os.path.isabs(item):
            errors.add(f"{path}[{i}]", f"must be an absolute path, got {item!r}")
        else:
            out.append(os.path.normpath(item))
    return out


def _entries(raw: Any, key: str, errors: _Errors) -> list[tuple[str, dict[str, Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.add(key, "must be a list, one entry per server")
        return []
    out = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        path = f"{key}[{i}]"
        if not isinstance(entry, dict):
            errors.add(path, "must be a mapping")
            continue
        name = entry.get("name")
        if isinstance(name, str):
            if name in names:
                errors.add(f"{path}.name", f"duplicate name {name!r}")
            names.add(name)
        out.append((path, entry))
    return out


# The keys of a postgres[] / mysql[] entry and the YAML types each takes (the schema's, in
# the settings' field order); which are required, and the defaults, come from the settings.
POSTGRES_KEYS = schema.POSTGRES.types()
MYSQL_KEYS = schema.MYSQL.types()


def _postgres(raw: Any, errors: _Errors) -> tuple[PostgresSettings, ...]:
    out = []
    required = _required(PostgresSettings)
    for path, entry in _entries(raw, "postgres", errors):
        vals = _take(entry, path, errors, schema.POSTGRES, required)
        # the thaw runs pg_backup_stop (statement_timeout) then the archive wait; the agent
        # gives each writer's thaw 30 s (agent/session.py THAW_STEP_SECONDS), keep 3 s spare
        thaw = vals.get("statement_timeout", PostgresSettings.statement_timeout) + vals.get(
            "archive_timeout", PostgresSettings.archive_timeout
        )
        if thaw > PG_THAW_SECONDS:
            errors.add(
                f"{path}.archive_timeout",
                f"with statement_timeout must not exceed "
                f"{PG_THAW_SECONDS:g} s (the thaw bound), got {thaw:g}",
            )
            vals.pop("archive_timeout", None)
        if required <= vals.keys():
            out.append(PostgresSettings(**vals))
    return tuple(out)


def _mysql(raw: Any, errors: _Errors) -> tuple[MysqlSettings, ...]:
    out = []
    required = _required(MysqlSettings)
    for path, entry in _entries(raw, "mysql", errors):
        vals = _take(entry, path, errors, schema.MYSQL, required)
        if "host" in vals and "unix_socket" not in entry:
            vals["unix_socket"] = None
        if required <= vals.keys():
            out.append(MysqlSettings(**vals))
    return tuple(out)


TOP_KEYS = schema.TOP_KEYS
# the dataclass each section is validated into: where the reference takes the defaults from
DEFAULTS: dict[str, object] = {
    "listen": ListenConfig(),
    "freeze": FreezeConfig(),
    "state_dir": Config(),
    "scripts": ScriptsConfig(),
    "filesystems": FilesystemsConfig(),
    "postgres": PostgresSettings,
    "mysql": MysqlSettings,
}


def default(section: schema.Section, key: schema.Key) -> object:
    """The documented default of ``key`` (the dataclass field's), or MISSING if required."""
    owner = DEFAULTS[section.name]
    for f in dataclasses.fields(owner):  # type: ignore[arg-type]
        if f.name == key.name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    return None  # a key with no field of its own (listen.vsock): off unless given


def parse(raw: Any, source: str = "<string>") -> Config:
    """Validate a loaded YAML document; raise ConfigError listing every problem."""
    errors = _Errors()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the configuration must be a YAML mapping")
    for key in raw:
        if key not in TOP_KEYS:
            errors.add(str(key), f"unknown key; known: {', '.join(TOP_KEYS)}")
    state_dir = raw.get("state_dir", Config.state_dir)
    if not isinstance(state_dir, str) or not os.path.isabs(state_dir):
        errors.add("state_dir", f"must be an absolute path, got {state_dir!r}")
    config = Config(
        listen=_listen(raw.get("listen"), errors),
        freeze=_freeze(raw.get("freeze"), errors),
        scripts=_scripts(raw["scripts"], errors) if "scripts" in raw else None,
        filesystems=_filesystems(raw["filesystems"], errors) if "filesystems" in raw else None,
        postgres=_postgres(raw.get("postgres"), errors),
        mysql=_mysql(raw.get("mysql"), errors),
        state_dir=state_dir if isinstance(state_dir, str) else Config.state_dir,
        source=source,
    )
    if errors.items:
        listing = "\n  ".join(errors.items)
        raise ConfigError(
            f"{source}: {len(errors.items)} problem(s):\n  {listing}", problems=errors.items
        )
    return config


def load(path: str | os.PathLike[str] = DEFAULT_PATH) -> Config:
    """Read and validate a config file. Raises ConfigError (unreadable, not YAML, invalid)."""
    p = os.fspath(path)  # open(), not pathlib: the client verbs start faster without it
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the configuration: {err.strerror}") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from err
    return parse(raw, p)
