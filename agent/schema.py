"""The configuration's keys: what YAML type each takes, its bounds, and what it means.

One table, read by both the validator (agent/config.py: unknown keys, types, bounds) and the
reference docs/config.md (rendered from it by agent/configdoc.py, and checked against it by a
unit test), so the two cannot drift. The defaults are not written here: they are the fields'
defaults of the dataclasses the configuration is validated into (agent/config.py and the
writers' settings modules), which agent/config.py joins to this table. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

NONE = type(None)
NUM = (int, float)


@dataclass(frozen=True)
class Key:
    """One key of a section: ``name`` as written in YAML, the types it accepts, its bounds."""

    name: str
    types: tuple[type, ...]
    doc: str
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive
    positive: bool = False  # must be greater than 0
    choices: tuple[str, ...] = ()
    default: str | None = None  # how the reference spells the default, when the field's own
    # value is not what a user writes (None in the dataclass for 'auto', say)

    def bounds(self) -> str:
        """The bounds in words, for the reference and the error messages."""
        if self.choices:
            return ", ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{_number(self.minimum)}..{_number(self.maximum)}"
        if self.minimum is not None:
            return f">= {_number(self.minimum)}"
        if self.positive:
            return "> 0"
        return ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Section:
    """A top-level key: a mapping of keys, or (``entries``) a list of such mappings."""

    name: str
    doc: str
    keys: tuple[Key, ...]
    entries: bool = False  # a list, one entry per server
    rules: tuple[str, ...] = ()  # what holds across keys, in words (checked in config.py)

    def key(self, name: str) -> Key:
        return next(k for k in self.keys if k.name == name)

    def types(self) -> dict[str, tuple[type, ...]]:
        """key name -> accepted types, in the table's order (the order errors list them)."""
        return {k.name: k.types for k in self.keys}


TOP = Section(
    "state_dir",
    "Where the daemon keeps its marker of frozen mounts; must be on a filesystem that is "
    "never frozen (a tmpfs such as /run).",
    (Key("state_dir", (str,), "an absolute path"),),
)

LISTEN = Section(
    "listen",
    "Where the daemon listens. At least one of `unix`, `vsock`, `virtio_serial`.",
    (
        Key(
            "unix",
            (str, NONE),
            "Unix socket (mode 0600, peers checked with SO_PEERCRED); null turns it off",
        ),
        Key("vsock", (dict,), "`{port: N}`: listen on this vsock port for the host", default="off"),
        Key(
            "virtio_serial", (str,), "a virtio-serial port, `/dev/virtio-ports/NAME`", default="off"
        ),
        Key(
            "group",
            (str,),
            "members of this group may connect too (the socket becomes 0660); the group must exist",
            default="none",
        ),
    ),
    rules=(
        "`unix` is an absolute path.",
        "`group` names a group that exists on this machine.",
    ),
)
VSOCK = Section("listen.vsock", "", (Key("port", (int,), "the vsock port", 1, 4294967295),))

FREEZE = Section(
    "freeze",
    "The hold's bounds.",
    (
        Key(
            "ceiling_seconds",
            NUM,
            "from the first lock, everything is released by this "
            "time even if no thaw comes (never longer than 60 s)",
            1,
            60,
        ),
        Key(
            "timeout_seconds",
            NUM,
            "budget for prepare + lock; past it: freezeFail rollback",
            positive=True,
        ),
    ),
    rules=("`timeout_seconds` is at most `ceiling_seconds`.",),
)

SCRIPTS = Section(
    "scripts",
    "backupScripts.d scripts, run with `freeze` / `thaw` / `freezeFail` like VMware Tools "
    "runs them. Absent: no scripts run.",
    (
        Key(
            "dir",
            (str,),
            "the folder of scripts (a missing folder fails `check` and is "
            "logged once at start; an empty one is fine)",
        ),
        Key(
            "timeout_seconds",
            NUM,
            "each script's limit; past it its process group is killed",
            positive=True,
        ),
        Key(
            "legacy_dir",
            (str, NONE),
            "where `pre-freeze-script` / `post-thaw-script` live; null to ignore them",
        ),
        Key(
            "require_root_owner",
            (bool,),
            "refuse scripts not owned by root or writable by group/others",
        ),
        Key(
            "concurrent",
            (list,),
            "file names of scripts whose `freeze` blocks no client: they run beside the "
            "databases' prepare instead of inside the blocked window",
            default="[]",
        ),
    ),
)

FILESYSTEMS = Section(
    "filesystems",
    "The filesystems frozen with FIFREEZE, children before parents. Absent: none is frozen.",
    (
        Key(
            "mounts",
            (str, list),
            "`auto` (every local, writable, freezable mount) or a "
            "list of mount points (`[]`: none)",
            default="auto",
        ),
        Key("exclude", (list,), "mount points never frozen (absolute paths)"),
    ),
)

POSTGRES = Section(
    "postgres",
    "One entry per PostgreSQL cluster (9.6 and later). Details: docs/databases.md.",
    (
        Key("name", (str,), "the writer's name (`postgres:NAME`), unique"),
        Key("dsn", (str,), "libpq connection string; never logged whole"),
        Key("connect_timeout", NUM, "seconds to connect", positive=True),
        Key(
            "statement_timeout",
            NUM,
            "bound for CHECKPOINT, pg_backup_start, pg_backup_stop",
            positive=True,
        ),
        Key(
            "wait_for_archive",
            (bool,),
            "after pg_backup_stop, wait until the last WAL segment is archived",
        ),
        Key("archive_timeout", NUM, "... at most this long (holds nothing)", positive=True),
        Key(
            "artifacts_dir",
            (str,),
            "write backup_label, tablespace_map and backup_info.json to a folder per snapshot here",
            default="none",
        ),
    ),
    entries=True,
    rules=(
        "`statement_timeout` + `archive_timeout` is at most 27 s (the agent bounds each "
        "writer's thaw at 30 s).",
    ),
)

MYSQL = Section(
    "mysql",
    "One entry per MySQL or MariaDB server. Details: docs/databases.md.",
    (
        Key("name", (str,), "the writer's name (`mysql:NAME`), unique"),
        Key(
            "unix_socket",
            (str, NONE),
            "the server's socket; null (or giving `host`) connects over TCP",
        ),
        Key("host", (str,), "TCP host", default="none"),
        Key("port", (int,), "TCP port", 1, 65535),
        Key("user", (str,), "the user to connect as"),
        Key("password_file", (str,), "its first line is the password", default="none"),
        Key(
            "lock",
            (str,),
            "the backup lock; auto: ftwrl when there are non-transactional tables, else "
            "backup_stage on MariaDB 10.4+, instance_lock on MySQL 8.0+, else ftwrl",
            choices=("auto", "ftwrl", "backup_stage", "instance_lock"),
        ),
        Key("connect_timeout", NUM, "seconds to connect", positive=True),
        Key(
            "lock_wait_timeout",
            NUM,
            "bound for each lock statement (server-side + a watchdog that KILLs it)",
            positive=True,
        ),
        Key(
            "long_query_wait",
            NUM,
            "ftwrl: wait this long for long statements before locking",
            minimum=0,
        ),
        Key(
            "long_query_threshold",
            NUM,
            "ftwrl: a statement running longer than this is long",
            positive=True,
        ),
        Key("kill_long_queries", (bool,), "ftwrl: KILL QUERY them instead of failing the freeze"),
    ),
    entries=True,
)

SECTIONS = (LISTEN, FREEZE, TOP, SCRIPTS, FILESYSTEMS, POSTGRES, MYSQL)
TOP_KEYS = ("listen", "freeze", "scripts", "filesystems", "postgres", "mysql", "state_dir")
