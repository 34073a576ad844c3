"""``rbd-watch``: make anybody's ``rbd snap create`` of a VM's images application-consistent.

Before librbd snapshots an image it notifies every client that has the image open read-write
and registered a quiesce watch (``rbd_quiesce_watch``), waits for each to answer
(``rbd_quiesce_complete``), snapshots, then sends unquiesce; a group snapshot notifies every
member image at once (``src/librbd/ImageWatcher.cc``, ``notify_quiesce``). QEMU's rbd driver
never registers such a watch, so for a VM nobody acts on it. ``Watcher`` does: it holds every
image of the group (or the one image) open, and on a quiesce notification freezes the guest
through its agent, answers 0 once the freeze holds (or -EIO when it failed, which fails the
snapshot unless the mode is ``preferred``), and thaws on unquiesce. It then records the
agent's report for the snapshots that appeared, beside those of ``quiesce-host snapshot
create`` (``rbd_records``, the ``watch`` object), so ``snapshot list|show`` show them
``application``/``filesystem`` consistent, from any host.

python3-rbd does not wrap the quiesce watch, so this module opens the images itself with
ctypes on ``librados.so.2`` / ``librbd.so.1`` (a second, private librados client). librbd
calls the callbacks on its own threads; they only queue the event, and one loop does the
freeze and thaw, so that several images of one group snapshot cost one freeze. Limits (from
librbd): a read-only handle gets no notification; each notification waits 5 s for an
answer and is sent ``rbd_quiesce_notification_attempts`` (10) times, so a freeze must answer
within about 50 s; a watcher that gets no unquiesce unquiesces by itself after 10 s.

Raises CephUnavailable (no librbd), ClusterUnreachable, RbdError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.protocol import Client, Consistency, Refused, ceiling_of
from common.errors import QuiesceError
from host.snapshots.cycle import MODES, artifacts_of, freeze_budget
from host.snapshots.rbd import RbdStore
from host.snapshots.rbd_cluster import INSTALL_HINT, CephUnavailable, ClusterUnreachable, RbdError
from host.snapshots.rbd_records import Records

logger = logging.getLogger(__name__)

CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
MAX_FREEZE = 40.0  # seconds: librbd gives up on an answer after about 50 s
RECORD_WITHIN = 5.0  # seconds after the unquiesce to look for the snapshot it was for
Snap = tuple[str, str, str]  # (kind, group or image name, snapshot name)


def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    try:
        rados = ctypes.CDLL(ctypes.util.find_library("rados") or "librados.so.2")
        rbd = ctypes.CDLL(ctypes.util.find_library("rbd") or "librbd.so.1")
    except OSError as err:
        raise CephUnavailable(f"librados/librbd cannot be loaded ({err}); {INSTALL_HINT}") from err
    vp, cp, u64p = ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64)
    rados.rados_create2.argtypes = [ctypes.POINTER(vp), cp, cp, ctypes.c_uint64]
    rados.rados_conf_read_file.argtypes = [vp, cp]
    rados.rados_conf_parse_env.argtypes = [vp, cp]
    rados.rados_conf_set.argtypes = [vp, cp, cp]
    rados.rados_connect.argtypes = [vp]
    rados.rados_shutdown.argtypes = [vp]
    rados.rados_ioctx_create.argtypes = [vp, cp, ctypes.POINTER(vp)]
    rados.rados_ioctx_set_namespace.argtypes = [vp, cp]
    rados.rados_ioctx_destroy.argtypes = [vp]
    rbd.rbd_open.argtypes = [vp, cp, ctypes.POINTER(vp), cp]
    rbd.rbd_close.argtypes = [vp]
    rbd.rbd_quiesce_watch.argtypes = [vp, CALLBACK, CALLBACK, vp, u64p]
    rbd.rbd_quiesce_complete.argtypes = [vp, ctypes.c_uint64, ctypes.c_int]
    rbd.rbd_quiesce_complete.restype = None
    rbd.rbd_quiesce_unwatch.argtypes = [vp, ctypes.c_uint64]
    return rados, rbd


class Handles:
    """The images opened read-write through ctypes, each with its quiesce watch."""

    def __init__(self, store: RbdStore, on_event: Callable[[str, int], None]) -> None:
        self.rados, self.rbd = _libs()
        spec = store.spec
        self.names = [name for _, name in store.subject.images()]
        self.cluster, self.ioctx = ctypes.c_void_p(), ctypes.c_void_p()
        self.images: list[ctypes.c_void_p] = []
        self.watches: list[int] = []
        name = f"client.{spec.user or 'admin'}".encode()
        self._check(
            self.rados.rados_create2(ctypes.byref(self.cluster), b"ceph", name, 0), "create"
        )
        conf = spec.conf.encode() if spec.conf else None
        self._check(self.rados.rados_conf_read_file(self.cluster, conf), "read the conf", True)
        if spec.keyring:
            self.rados.rados_conf_set(self.cluster, b"keyring", spec.keyring.encode())
        self.rados.rados_conf_set(self.cluster, b"client_mount_timeout", b"15")
        self.rados.rados_conf_parse_env(self.cluster, None)
        self._check(self.rados.rados_connect(self.cluster), "connect", True)
        r = self.rados.rados_ioctx_create(
            self.cluster, spec.pool.encode(), ctypes.byref(self.ioctx)
        )
        self._check(r, f"open pool {spec.pool!r}")
        self.rados.rados_ioctx_set_namespace(self.ioctx, spec.namespace.encode())
        # the callbacks must outlive the watches: keep them on the object
        self._quiesce = CALLBACK(lambda arg: on_event("quiesce", int(arg or 0)))
        self._unquiesce = CALLBACK(lambda arg: on_event("unquiesce", int(arg or 0)))
        for i, image in enumerate(self.names):
            handle = ctypes.c_void_p()
            self._check(self.rbd.rbd_open(self.ioctx, image.encode(), ctypes.byref(handle), None),
                        f"open image {image!r}")  # fmt: skip
            self.images.append(handle)
            watch = ctypes.c_uint64()
            self._check(self.rbd.rbd_quiesce_watch(handle, self._quiesce, self._unquiesce,
                                                   ctypes.c_void_p(i), ctypes.byref(watch)),
                        f"watch image {image!r}")  # fmt: skip
            self.watches.append(watch.value)
        self.spec = spec

    def _check(self, r: int, step: str, unreachable: bool = False) -> None:
        if r < 0:
            self.close()
            cls = ClusterUnreachable if unreachable else RbdError
            raise cls(f"rbd-watch: cannot {step}: {errno.errorcode.get(-r, r)} ({-r})")

    def complete(self, index: int, r: int) -> None:
        self.rbd.rbd_quiesce_complete(self.images[index], self.watches[index], r)

    def close(self) -> None:
        for image, watch in zip(self.images, self.watches, strict=False):
            self.rbd.rbd_quiesce_unwatch(image, watch)
        for image in self.images:
            self.rbd.rbd_close(image)
        self.images, self.watches = [], []
        if self.ioctx:
            self.rados.rados_ioctx_destroy(self.ioctx)
            self.ioctx = ctypes.c_void_p()
        if self.cluster:
            self.rados.rados_shutdown(self.cluster)
            self.cluster = ctypes.c_void_p()


class Watcher:
    """Freezes the guest at ``endpoint`` around every snapshot librbd takes of the images."""

    def __init__(self, spec: str, endpoint: str, mode: str = "required",
                 say: Callable[[str], None] = print) -> None:  # fmt: skip
        if mode not in MODES:
            raise QuiesceError(f"--quiesce-mode must be one of {', '.join(MODES)}")
        self.mode, self.endpoint, self.say = mode, endpoint, say
        self.events: queue.Queue[tuple[str, int]] = queue.Queue()
        self.store = RbdStore(spec)
        try:
            self.handles = Handles(self.store, lambda kind, i: self.events.put((kind, i)))
        except BaseException:
            self.store.close()
            raise
        self.client: Client | None = None
        self.cycle: dict[str, Any] | None = None  # the freeze in progress (or held)
        self.pending: list[dict[str, Any]] = []  # cuts whose snapshots are to be recorded
        self.stopping = threading.Event()

    def run(self) -> None:
        """Until ``stop()``: answer every quiesce, thaw on unquiesce."""
        names = ", ".join(self.handles.names)
        self.say(f"watching {self.store.spec} ({names}); agent {self.endpoint}, {self.mode}")
        while not self.stopping.is_set():
            try:
                kind, index = self.events.get(timeout=0.2)
            except queue.Empty:
                self._record_pending()
                continue
            if kind == "quiesce":
                self._quiesce(index)
            else:
                self._unquiesce(index)

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        if self.cycle is not None and self.cycle.get("frozen"):
            self._thaw(self.cycle)
        self.handles.close()
        self.store.close()

    # -- the cycle ------------------------------------------------------------------------
    def _quiesce(self, index: int) -> None:
        image = self.handles.names[index]
        if self.cycle is None:
            self.cycle = {"t0": time.monotonic(), "images": set(), "before": self._inventory()}
            self._freeze()
        cycle = self.cycle
        cycle["images"].add(index)
        r = 0 if cycle.get("frozen") or self.mode == "preferred" else -errno.EIO
        self.handles.complete(index, r)
        self.say(f"quiesce {image}: answered {r}" + (f" ({cycle['error']})" if r else ""))

    def _freeze(self) -> None:
        cycle = self.cycle
        assert cycle is not None
        try:
            self.client = Client(self.endpoint).connect()
            ceiling = ceiling_of(self.client.status())
            label = f"rbd-watch {self.store.spec}"
            cycle["report"] = self.client.freeze(label, min(MAX_FREEZE, freeze_budget(ceiling)))
            cycle["frozen"] = time.monotonic()
            self.say(f"frozen in {(cycle['frozen'] - cycle['t0']) * 1000:.1f} ms")
        except QuiesceError as err:
            cycle["error"] = f"the freeze failed: {err}"
            cycle["report"] = err.report if isinstance(err, Refused) else None
            self._close_client()

    def _unquiesce(self, index: int) -> None:
        """The first unquiesce ends the cut (librbd sends them once every image of it has
        its snapshot); the other images' unquiesces of the same cut find no cycle."""
        cycle, self.cycle = self.cycle, None
        if cycle is None:
            return
        if cycle.get("frozen"):
            self._thaw(cycle)
        self.pending.append(cycle)
        self._record_pending()

    def _thaw(self, cycle: dict[str, Any]) -> None:
        assert self.client is not None
        try:
            cycle["report"] = self.client.thaw(30.0)
            cycle["confirmed"] = True
        except QuiesceError as err:
            cycle["error"] = f"the thaw was not confirmed: {err}"
            if isinstance(err, Refused) and err.report is not None:
                cycle["report"] = err.report
        cycle["thawed"] = time.monotonic()
        self._close_client()
        held = (cycle["thawed"] - cycle["frozen"]) * 1000
        self.say(
            f"thawed: held {held:.1f} ms" + (f"; {cycle['error']}" if "error" in cycle else "")
        )

    def _close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- the record -----------------------------------------------------------------------
    def _inventory(self) -> set[Snap]:
        """The complete group snapshots and every member image's own snapshots."""
        subject, rbd = self.store.subject, self.store.rbd
        user = rbd.RBD_SNAP_NAMESPACE_TYPE_USER
        found: set[Snap] = set()
        try:
            if subject.kind == "group":
                found |= {("group", subject.name, s["name"]) for s in subject.snapshots()
                          if s["state"] == "complete"}  # fmt: skip
            for ioctx, image in subject.images():
                found |= {("image", image, s["name"]) for s in subject.image_snaps(ioctx, image)
                          if s.get("namespace", user) == user}  # fmt: skip
        except rbd.Error as err:
            logger.warning("listing the snapshots failed: %s", err)
        return found

    def _record_pending(self) -> None:
        """Record the cuts whose snapshots have appeared; give up on a cut after a while
        (its snapshot failed, or was deleted at once)."""
        if not self.pending:
            return
        now = self._inventory()
        for cycle in list(self.pending):
            new = sorted(now - cycle["before"])
            if new:
                self._record(cycle, new)
            elif time.monotonic() - cycle.get("thawed", cycle["t0"]) < RECORD_WITHIN:
                continue
            else:
                self.say("no new snapshot appeared for the last quiesce: nothing recorded")
            self.pending.remove(cycle)

    def _record(self, cycle: dict[str, Any], snaps: list[Snap]) -> None:
        """The agent's report for each snapshot the cut was for."""
        report = cycle.get("report")
        confirmed = cycle.get("confirmed", False)
        level = report["consistency"] if confirmed and report else Consistency.CRASH
        host = {"by": "rbd-watch", "endpoint": self.endpoint, "mode": self.mode,
                "confirmed": confirmed, "fallback": cycle.get("error"),
                "window_ms": _ms(cycle.get("frozen"), cycle.get("thawed")),
                "images": [self.handles.names[i] for i in sorted(cycle["images"])]}  # fmt: skip
        record = {"consistency": level, "report": {"agent": report, "host": host},
                  "artifacts": artifacts_of(report)}  # fmt: skip
        for kind, owner, name in snaps:
            Records(self.store.conn, kind, owner, role="watch").put(name, record)
        shown = ", ".join(f"{owner}@{name}" for _, owner, name in snaps)
        self.say(f"recorded {shown} as {level}")


def _ms(a: float | None, b: float | None) -> float | None:
    return round((b - a) * 1000, 1) if a is not None and b is not None else None


__all__ = ["Watcher"]
