"""Reaching a Ceph cluster for the ``rbd:`` target: the spec, the binding, the connection.

``rbd:POOL/NAME`` names an RBD group (the images of one VM, cut together) or a single image,
``rbd:POOL/NAMESPACE/NAME`` one in a pool namespace; options follow QEMU's rbd filenames,
``:conf=PATH`` (default: ``$CEPH_CONF`` or /etc/ceph/ceph.conf), ``:id=USER`` (default
``admin``), ``:keyring=PATH``, and ``:type=group|image`` where a group and an image share a
name. ``CEPH_ARGS`` is honoured as by every Ceph client.

librbd comes through Debian's ``python3-rbd`` / ``python3-rados`` (no maintained binding is on
PyPI). The import is optional: without it everything else runs, and opening an ``rbd:``
target raises ``CephUnavailable`` saying what to install. librados calls block in C, so every
connection bounds them: ``rados osd op timeout`` and ``rados mon op timeout`` (30 s) make a
stuck cluster an error instead of a hang, and ``client mount timeout`` (15 s) bounds the
connect; the conf file or ``CEPH_ARGS`` (``--client_mount_timeout=5``) may set them.

Raises: RbdSpecError (a bad spec, naming the part), CephUnavailable, ClusterUnreachable
(exit 7), RbdError (a librbd or librados call failed; the message names the step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import QuiesceError

try:  # Debian's python3-rados / python3-rbd; optional (see the module docstring)
    import rados as librados
    import rbd as librbd
except ImportError:  # pragma: no cover - exercised on machines without Ceph
    librados = None
    librbd = None

PREFIX = "rbd:"
OPTIONS = ("conf", "id", "keyring", "type")
KINDS = ("group", "image")
OP_TIMEOUT = 30  # seconds, for every OSD and monitor operation (unless the conf says otherwise)
CONNECT_TIMEOUT = 15
INSTALL_HINT = (
    "the rbd: target needs librbd's Python binding: apt-get install python3-rbd python3-rados "
    "(Debian/Ubuntu); a virtual environment sees them when made with --system-site-packages "
    "from /usr/bin/python3, or with scripts/setup, which links the two modules into .venv"
)


class RbdError(QuiesceError):
    """A librbd or librados call failed; the message names the step and the target."""

    code = "RbdError"
    exit_code = 2


class RbdSpecError(RbdError):
    """An ``rbd:`` spec that cannot be parsed; the message names the part."""

    code = "RbdSpecError"


class CephUnavailable(RbdError):
    """python3-rbd / python3-rados are not importable here."""

    code = "CephUnavailable"


class ClusterUnreachable(RbdError):
    """The cluster does not answer (no monitor, a wrong conf, a key it refuses)."""

    code = "ClusterUnreachable"
    exit_code = 7


def is_rbd(text: str) -> bool:
    return text.startswith(PREFIX)


def available() -> bool:
    return librbd is not None and librados is not None


def binding() -> tuple[Any, Any]:
    """(rados, rbd), or CephUnavailable."""
    if librados is None or librbd is None:
        raise CephUnavailable(INSTALL_HINT)
    return librados, librbd


@dataclass(frozen=True)
class RbdSpec:
    """Where a group or an image is, and how to reach its cluster."""

    pool: str
    name: str
    namespace: str = ""
    kind: str | None = None  # "group" or "image"; None: whichever exists
    conf: str | None = None
    user: str | None = None
    keyring: str | None = None

    @property
    def path(self) -> str:
        """``POOL[/NAMESPACE]/NAME``, as the rbd command line writes it."""
        return "/".join(p for p in (self.pool, self.namespace, self.name) if p)

    def __str__(self) -> str:
        return PREFIX + self.path


def parse_spec(text: str) -> RbdSpec:
    """``rbd:POOL[/NAMESPACE]/NAME[:conf=PATH][:id=USER][:keyring=PATH][:type=group|image]``.

    Raises RbdSpecError naming what is wrong.
    """
    if not is_rbd(text):
        raise RbdSpecError(f"{text!r}: an RBD target starts with {PREFIX}")
    path, *opts = text[len(PREFIX) :].split(":")
    options: dict[str, str] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if key not in OPTIONS or not eq or not value:
            raise RbdSpecError(
                f"{text!r}: bad option {opt!r} (options: {', '.join(k + '=...' for k in OPTIONS)})"
            )
        options[key] = value
    parts = path.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise RbdSpecError(f"{text!r}: write rbd:POOL/NAME or rbd:POOL/NAMESPACE/NAME")
    if "@" in parts[-1]:
        raise RbdSpecError(f"{text!r}: give the snapshot as NAME, not as @SNAP in the target")
    kind = options.get("type")
    if kind is not None and kind not in KINDS:
        raise RbdSpecError(f"{text!r}: type must be group or image, not {kind!r}")
    return RbdSpec(
        pool=parts[0],
        name=parts[-1],
        namespace=parts[1] if len(parts) == 3 else "",
        kind=kind,
        conf=options.get("conf"),
        user=options.get("id"),
        keyring=options.get("keyring"),
    )


def errno_of(err: BaseException) -> int | None:
    value = getattr(err, "errno", None)
    return abs(value) if isinstance(value, int) else None


def failed(spec: RbdSpec, step: str, err: BaseException) -> RbdError:
    """The RbdError for a librbd/librados exception, naming the step and the target."""
    return RbdError(f"{spec}: {step} failed: {err}")


# librados' own defaults (0: wait forever; 300 s to connect) -> ours
BOUNDS = {"rados_osd_op_timeout": 0.0, "rados_mon_op_timeout": 0.0, "client_mount_timeout": 300.0}


def bound(cluster: Any, op_timeout: float) -> None:
    """Bound every operation and the connect, unless the conf file or CEPH_ARGS did."""
    ours = {"client_mount_timeout": float(CONNECT_TIMEOUT)}
    for key, default in BOUNDS.items():
        if float(cluster.conf_get(key)) == default:
            cluster.conf_set(key, str(ours.get(key, op_timeout)))


class Connection:
    """One librados client of the spec's cluster with an I/O context on its pool and namespace.

    Raises CephUnavailable, ClusterUnreachable, RbdError (no such pool).
    """

    def __init__(self, spec: RbdSpec, op_timeout: int = OP_TIMEOUT) -> None:
        rados, rbd = binding()
        self.spec = spec
        self.rbd = rbd
        self.rados = rados
        conf = {"keyring": spec.keyring} if spec.keyring else None
        where = spec.conf or "the default ceph.conf"
        try:  # reads the conf file and CEPH_ARGS
            self.cluster = rados.Rados(
                rados_id=spec.user or "admin", conffile=spec.conf or "", conf=conf
            )
            bound(self.cluster, op_timeout)
        except rados.Error as err:
            raise ClusterUnreachable(
                f"{spec}: cannot read the Ceph configuration ({where}): {err}"
            ) from err
        try:
            self.cluster.connect()  # bounded by client_mount_timeout (conf, CEPH_ARGS)
        except rados.Error as err:
            self.cluster.shutdown()
            raise ClusterUnreachable(
                f"{spec}: cannot connect to the Ceph cluster ({where}, client."
                f"{spec.user or 'admin'}): {err}"
            ) from err
        try:
            self.ioctx = self.cluster.open_ioctx(spec.pool)
            self.ioctx.set_namespace(spec.namespace)
        except rados.Error as err:
            self.cluster.shutdown()
            raise RbdError(f"{spec}: cannot open pool {spec.pool!r}: {err}") from err
        self.pools: dict[int, Any] = {self.ioctx.get_pool_id(): self.ioctx}

    def ioctx_of(self, pool_id: int) -> Any:
        """The I/O context of another pool (a group may hold images of several), same namespace."""
        if pool_id not in self.pools:
            name = self.cluster.pool_reverse_lookup(pool_id)
            ioctx = self.cluster.open_ioctx(name)
            ioctx.set_namespace(self.spec.namespace)
            self.pools[pool_id] = ioctx
        return self.pools[pool_id]

    def instance_id(self) -> int:
        return int(self.cluster.get_instance_id())

    def close(self) -> None:
        for ioctx in self.pools.values():
            ioctx.close()
        self.pools.clear()
        self.cluster.shutdown()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "CephUnavailable",
    "ClusterUnreachable",
    "Connection",
    "RbdError",
    "RbdSpec",
    "RbdSpecError",
    "available",
    "binding",
    "is_rbd",
    "parse_spec",
]
