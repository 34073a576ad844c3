"""The agent's configuration: YAML, validated once at load, every error named by its key.

A section that is absent turns its writer off. Defaults are the documented defaults, written
once, in the dataclasses: the agent's own below, the database writers' in their settings
modules (hooks/postgres/settings.py, hooks/mysql/settings.py, which import no driver, so
loading the configuration never loads psycopg or pymysql). Unknown keys and bad values are
errors, all reported together.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError
from hooks.mysql.settings import LOCKS, MysqlSettings
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
    spec: dict[str, type | tuple[type, ...]],
    required: Collection[str] = (),
) -> dict[str, Any]:
    """Pick the keys of ``spec`` (key: allowed types) from ``raw``, type-checked; unknown keys
    and missing ``required`` keys are errors."""
    out: dict[str, Any] = {}
    for key in raw:
        if key not in spec:
            errors.add(f"{path}.{key}", f"unknown key; known: {', '.join(spec)}")
    for key, types in spec.items():
        if key not in raw:
            if key in required:
                errors.add(f"{path}.{key}", "is required")
            continue
        value = raw[key]
        if isinstance(value, bool) and bool not in _as_tuple(types):
            errors.add(f"{path}.{key}", f"must be {_type_names(types)}, not a boolean")
        elif not isinstance(value, types):
            errors.add(f"{path}.{key}", f"must be {_type_names(types)}, got {value!r}")
        else:
            out[key] = value
    return out


def _required(settings: type) -> frozenset[str]:
    """The fields of a settings dataclass that have no default: the keys an entry must give."""
    return frozenset(
        f.name
        for f in dataclasses.fields(settings)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {
        int: "a number",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in _as_tuple(types)))


NUM = (int, float)


def _positive(values: dict[str, Any], key: str, path: str, errors: _Errors) -> None:
    if key in values and values[key] <= 0:
        errors.add(f"{path}.{key}", f"must be greater than 0, got {values[key]}")
        del values[key]


def _listen(raw: Any, errors: _Errors) -> ListenConfig:
    sec = _section(raw, "listen", errors)
    vals = _take(
        sec,
        "listen",
        errors,
        {"unix": (str, type(None)), "vsock": dict, "virtio_serial": str, "group": str},
    )
    vsock_port = None
    if "vsock" in vals:
        v = _take(vals.pop("vsock"), "listen.vsock", errors, {"port": int}, ("port",))
        vsock_port = v.get("port")
        if vsock_port is not None and not 1 <= vsock_port <= 0xFFFFFFFF:
            errors.add("listen.vsock.port", f"must be 1..4294967295, got {vsock_port}")
    if "unix" in sec and "unix" not in vals and sec["unix"] is None:
        vals["unix"] = None
    if sec and not any(k in sec for k in ("unix", "vsock", "virtio_serial")):
        errors.add("listen", "needs at least one of unix, vsock, virtio_serial")
    if vals.get("unix") is not None and not os.path.isabs(vals["unix"]):
        errors.add("listen.unix", f"must be an absolute path, got {vals['unix']!r}")
    return ListenConfig(vsock_port=vsock_port, **vals)


def _freeze(raw: Any, errors: _Errors) -> FreezeConfig:
    sec = _section(raw, "freeze", errors)
    vals = _take(sec, "freeze", errors, {"ceiling_seconds": NUM, "timeout_seconds": NUM})
    ceiling = vals.get("ceiling_seconds", FreezeConfig.ceiling_seconds)
    if not 1 <= ceiling <= 60:
        errors.add(
            "freeze.ceiling_seconds",
            f"must be 1..60 (the hold is never longer than 60 s), got {ceiling}",
        )
        vals.pop("ceiling_seconds")
    _positive(vals, "timeout_seconds", "freeze", errors)
    timeout = vals.get("timeout_seconds", FreezeConfig.timeout_seconds)
    if timeout > vals.get("ceiling_seconds", FreezeConfig.ceiling_seconds):
        errors.add(
            "freeze.timeout_seconds", f"must not exceed freeze.ceiling_seconds, got {timeout}"
        )
    return FreezeConfig(**{k: float(v) for k, v in vals.items()})


def _scripts(raw: Any, errors: _Errors) -> ScriptsConfig:
    sec = _section(raw, "scripts", errors)
    vals = _take(
        sec,
        "scripts",
        errors,
        {
            "dir": str,
            "timeout_seconds": NUM,
            "legacy_dir": (str, type(None)),
            "require_root_owner": bool,
        },
    )
    _positive(vals, "timeout_seconds", "scripts", errors)
    if "legacy_dir" in sec and sec["legacy_dir"] is None:
        vals["legacy_dir"] = None
    return ScriptsConfig(**vals)


def _filesystems(raw: Any, errors: _Errors) -> FilesystemsConfig:
    sec = _section(raw, "filesystems", errors)
    vals = _take(sec, "filesystems", errors, {"mounts": (str, list), "exclude": list})
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


# The keys of a postgres[] / mysql[] entry, in the settings' field order, and the YAML types
# each takes; which are required, and the defaults, come from the settings dataclasses.
POSTGRES_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "dsn": str,
    "connect_timeout": NUM,
    "statement_timeout": NUM,
    "wait_for_archive": bool,
    "archive_timeout": NUM,
    "artifacts_dir": str,
}
MYSQL_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "unix_socket": (str, type(None)),
    "host": str,
    "port": int,
    "user": str,
    "password_file": str,
    "lock": str,
    "connect_timeout": NUM,
    "lock_wait_timeout": NUM,
    "long_query_wait": NUM,
    "long_query_threshold": NUM,
    "kill_long_queries": bool,
}


def _postgres(raw: Any, errors: _Errors) -> tuple[PostgresSettings, ...]:
    out = []
    required = _required(PostgresSettings)
    for path, entry in _entries(raw, "postgres", errors):
        vals = _take(entry, path, errors, POSTGRES_KEYS, required)
        for key in ("connect_timeout", "statement_timeout", "archive_timeout"):
            _positive(vals, key, path, errors)
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
        vals = _take(entry, path, errors, MYSQL_KEYS, required)
        if vals.get("lock", MysqlSettings.lock) not in LOCKS:
            errors.add(f"{path}.lock", f"must be one of {', '.join(LOCKS)}, got {vals['lock']!r}")
            vals.pop("lock")
        for key in ("connect_timeout", "lock_wait_timeout", "long_query_threshold"):
            _positive(vals, key, path, errors)
        if "host" in vals and "unix_socket" not in entry:
            vals["unix_socket"] = None
        if required <= vals.keys():
            out.append(MysqlSettings(**vals))
    return tuple(out)


TOP_KEYS = ("listen", "freeze", "scripts", "filesystems", "postgres", "mysql", "state_dir")


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
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the configuration: {err.strerror}") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from err
    return parse(raw, str(p))
